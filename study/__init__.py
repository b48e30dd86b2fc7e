"""flowctl: train flow-matching models and manage the experiments around them."""

__version__ = "0.1.0"


def load_run(name_or_path, **options):
    """A run as a Python object (config, status, rows, model(), sample(), evaluate());
    see study/api.py and docs/python-api.md. Imported on first use: `import study` stays light."""
    from study.api import load_run as load

    return load(name_or_path, **options)


def list_runs(**filters):
    """What `flowctl list-runs --json` prints, as a list of dicts (study/api.py)."""
    from study.api import list_runs as listing

    return listing(**filters)
