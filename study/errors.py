"""The two kinds of failure flowctl reports to a person.

`UsageError` (exit 2): the input was wrong (a flag, a config file, a data file, a checkpoint).
`RunFailed` (exit 1): the input was fine but the run could not finish (NaN loss, disk full).
Both carry a one-line message that names the problem and, where there is one, the fix.
Library code raises them; only the CLI turns them into exit codes.
"""


class FlowctlError(Exception):
    """Base class: a one-line, user-facing message and the exit code it maps to."""

    exit_code = 1


class UsageError(FlowctlError, ValueError):
    """Bad input: unknown name, impossible value, unreadable file. Exit code 2."""

    exit_code = 2


class RunFailed(FlowctlError, RuntimeError):
    """The run started but could not finish. Exit code 1."""

    exit_code = 1
