"""Doc drift: every setting and every hook is documented where users look for it."""

from pathlib import Path

from dicomflow.kernel.settings import Settings
from dicomflow.processors import hookspecs

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [n for n in Settings.model_fields if f"`DICOMFLOW_{n.upper()}`" not in readme]
    assert not missing, f"README.md lacks these settings: {missing}"


def test_every_hook_is_documented() -> None:
    plugins_doc = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "dicomflow_spec")]
    assert hooks
    missing = [hook for hook in hooks if hook not in plugins_doc]
    assert not missing, f"docs/plugins.md lacks these hooks: {missing}"


def test_readme_has_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install . && dicomflow serve" in readme
    assert "bash scripts/test.sh" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
