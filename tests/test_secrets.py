"""mask_secrets: credentials are masked by key name or value shape; ordinary values are not."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest

from study.secrets import MASK, mask_secrets, mask_text

# Shaped like real credentials, but made up.
OPENAI_LIKE = "sk-" + "a1B2c3D4e5F6g7H8i9J0"
GITHUB_LIKE = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2"
AWS_LIKE = "AKIA" + "ABCDEFGHIJ234567"
AWS_SESSION_LIKE = "ASIA" + "QWERTYUIOP234567"
GOOGLE_LIKE = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"
SLACK_BOT_LIKE = "xoxb-" + "123456789012-abcdefABCDEF"
SLACK_USER_LIKE = "xoxp-" + "123456789012-abcdefABCDEF"
EVERY_SHAPE = [OPENAI_LIKE, GITHUB_LIKE, AWS_LIKE, AWS_SESSION_LIKE, GOOGLE_LIKE, SLACK_BOT_LIKE,
               SLACK_USER_LIKE]


@pytest.mark.parametrize("key", ["WANDB_API_KEY", "wandb_api_key", "api-key", "github_token",
                                 "GITHUB_TOKEN", "my_secret", "password", "db_password",
                                 "credentials"])
def test_masks_by_key(key: str) -> None:
    assert mask_secrets({key: "hunter2", "lr": 0.001}) == {key: MASK, "lr": 0.001}


@pytest.mark.parametrize("value", [*EVERY_SHAPE, f"  {GITHUB_LIKE}\n"])
def test_masks_by_value_shape(value: str) -> None:
    assert mask_secrets({"note": value, "dataset": "moons"}) == {"note": MASK, "dataset": "moons"}


@pytest.mark.parametrize("token", EVERY_SHAPE)
def test_masks_only_the_token_inside_longer_text(token: str) -> None:
    text = f"my key is {token}, do not share"
    assert mask_text(text) == f"my key is {MASK}, do not share"
    assert mask_secrets({"note": text, "tags": [f"({token})"]}) == {
        "note": f"my key is {MASK}, do not share", "tags": [f"({MASK})"]}


def test_masks_every_token_of_a_text() -> None:
    text = f"{AWS_LIKE}:{AWS_SESSION_LIKE}\n{GOOGLE_LIKE} {SLACK_BOT_LIKE}"
    assert mask_text(text) == f"{MASK}:{MASK}\n{MASK} {MASK}"


@pytest.mark.parametrize("value", ["sk-short", "ghp_short", "AKIA123", "task-1234567890abcdefgh",
                                   "ASIAN-cuisine", "AIzaShort", "xoxb-1", "moons",
                                   "mlp-icfm-moons-none", "mlp-icfm-task-1234567890abcdefgh", "",
                                   "AKIA" + "ABCDEFGHIJ2345678901"])
def test_values_that_only_resemble_credentials_are_kept(value: str) -> None:
    assert mask_secrets({"note": value}) == {"note": value}


def test_masks_the_current_wandb_api_key_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    api_key = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", api_key)
    data = {"note": api_key, "cmd": f"wandb login {api_key}", "dataset": "moons"}
    assert mask_secrets(data) == {"note": MASK, "cmd": f"wandb login {MASK}", "dataset": "moons"}


def test_the_wandb_value_check_needs_the_env_var() -> None:
    # The autouse fixture removes WANDB_API_KEY: the same value is then ordinary text.
    value = "0123456789abcdef0123456789abcdef01234567"
    assert mask_secrets({"note": value}) == {"note": value}


def test_masks_nested_dicts_and_lists() -> None:
    data = {
        "config": {"lr": 0.001, "wandb": {"api_key": "abc", "project": "flows"}},
        "env": [{"name": "HOME", "value": "/root"}, {"name": "X", "value": GITHUB_LIKE}],
        "tokens": ["t1", "t2"],
        "tags": ["moons", AWS_LIKE],
    }
    assert mask_secrets(data) == {
        "config": {"lr": 0.001, "wandb": {"api_key": MASK, "project": "flows"}},
        "env": [{"name": "HOME", "value": "/root"}, {"name": "X", "value": MASK}],
        "tokens": [MASK, MASK],
        "tags": ["moons", MASK],
    }


def test_leaves_ordinary_values_alone() -> None:
    config = {"arch": "mlp", "flow": "icfm", "dataset": "moons", "lr": 0.001, "epochs": 20,
              "ema_decay": 0.999, "teacher": None, "stages": [], "grad_clip": 1.0,
              "val_fraction": 0.1, "run_name": "mlp-icfm-moons-none", "debug": False}
    assert mask_secrets(config) == config


def test_returns_a_copy_and_leaves_the_input_unchanged() -> None:
    data = {"password": "hunter2", "nested": {"token": "abc", "items": [GITHUB_LIKE, 1]},
            "pair": ("moons", OPENAI_LIKE)}
    original = copy.deepcopy(data)
    masked = mask_secrets(data)
    assert data == original
    assert masked is not data and masked["nested"] is not data["nested"]
    assert masked["nested"]["items"] is not data["nested"]["items"]
    assert masked["nested"] == {"token": MASK, "items": [MASK, 1]}
    assert list(masked["pair"]) == ["moons", MASK]
    masked["nested"]["token"] = "changed"
    assert data["nested"]["token"] == "abc"


def test_scalars_pass_through() -> None:
    assert mask_secrets(3) == 3
    assert mask_secrets(None) is None
    assert mask_secrets("moons") == "moons"
    assert mask_secrets(OPENAI_LIKE) == MASK


def test_everything_under_a_secret_key_is_masked() -> None:
    masked = mask_secrets({"credentials": {"aws": "hunter2"}, "lr": 0.1})
    assert "hunter2" not in repr(masked)
    assert masked["lr"] == 0.1


def test_a_numeric_value_under_a_secret_key_is_masked() -> None:
    assert mask_secrets({"password": 123456}) == {"password": MASK}


DISABLED_PROCESS = f"""
from study.secrets import mask_secrets, mask_text
print(mask_secrets({{"note": {OPENAI_LIKE!r}, "password": "hunter2"}}))
print(mask_text("key {GOOGLE_LIKE}"))
print(mask_secrets({{"group": {AWS_LIKE!r}}}))
"""


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    from tests.support.helpers import REPO_ROOT

    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=60, check=True)


def test_disable_secret_filter_turns_masking_off_with_one_warning_per_process() -> None:
    result = run_python(DISABLED_PROCESS, DISABLE_SECRET_FILTER="1")
    assert result.stdout.splitlines() == [
        str({"note": OPENAI_LIKE, "password": "hunter2"}), f"key {GOOGLE_LIKE}",
        str({"group": AWS_LIKE})]
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1 and "DISABLE_SECRET_FILTER" in warnings[0], result.stderr


@pytest.mark.parametrize("value", ["", "0"])
def test_the_switch_set_empty_or_zero_keeps_masking(value: str) -> None:
    result = run_python(DISABLED_PROCESS, DISABLE_SECRET_FILTER=value)
    assert result.stdout.splitlines() == [
        str({"note": MASK, "password": MASK}), f"key {MASK}", str({"group": MASK})]
    assert result.stderr == ""


# Every printable ASCII character that is not a letter or digit: a token after any of them,
# `-` and `_` included ("team-ghp_...", "prod-AKIA...", "x-sk-..."), is masked.
SEPARATORS = [chr(code) for code in range(32, 127) if not chr(code).isalnum()]


@pytest.mark.parametrize("token", EVERY_SHAPE)
@pytest.mark.parametrize("separator", SEPARATORS)
def test_a_token_glued_to_a_name_by_any_separator_is_masked(token: str, separator: str) -> None:
    text = f"team{separator}{token}"
    assert token not in mask_text(text) and mask_text(text) == f"team{separator}{MASK}"
    assert token not in str(mask_secrets({"group": text, "tags": [f"x{separator}{token}!"]}))


@pytest.mark.parametrize("text", ["team-ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2", "prod-AKIA" + "ABCDEFGHIJ234567",
                                  "x-sk-" + "a1B2c3D4e5F6g7H8i9J0", "run_xoxb-" + "123456789012-abcdef",
                                  "github_pat_" + "11ABCDEFG0123456789_abcdefghij",
                                  "glpat-" + "abcdefghij0123456789", "hf_" + "abcdefghijklmnopqrstuvwxyz012345",
                                  "teamghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2"])
def test_the_issue_examples_and_other_providers_are_masked(text: str) -> None:
    assert "[SECRET]" in mask_text(text) and text not in mask_text(text)


@pytest.mark.parametrize("word", ["task", "disk", "mASIA", "xAIza", "boxoxb"])
def test_a_prefix_inside_a_word_is_not_a_token(word: str) -> None:
    """After a letter or digit, `sk-`, `AKIA`, `AIza`, `xox` are part of a word."""
    text = {"task": "task-1234567890abcdefgh", "disk": "disk-0123456789abcdefgh",
            "mASIA": "mASIA" + "QWERTYUIOP234567", "xAIza": "xAIza" + "S" * 35,
            "boxoxb": "boxoxb-123456789012"}[word]
    assert mask_text(text) == text
