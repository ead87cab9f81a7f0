"""
The twistd plugin: found after the README's install, and found whatever the
state of Twisted's plugin cache.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PLUGIN = REPO / "twisted" / "plugins" / "mailframe_plugins.py"

# Lists the twistd plugins of one plugin directory of our own, ignoring every
# installed one (mailframe's among them), as twistd does with getPlugins.
LIST_PLUGINS = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import twisted.plugins, os
    ours = os.path.join(sys.argv[1], "twisted", "plugins")
    twisted.plugins.__path__[:] = [ours]
    from twisted.plugin import getPlugins
    from twisted.application.service import IServiceMaker
    print(sorted(p.tapname for p in getPlugins(IServiceMaker)))
    """
)


def list_plugins(site: pathlib.Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", LIST_PLUGINS, str(site)],
        capture_output=True, text=True, timeout=60, cwd=str(site),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def site(tmp_path: pathlib.Path) -> pathlib.Path:
    plugins = tmp_path / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    shutil.copy(PLUGIN, plugins / PLUGIN.name)
    return tmp_path


def test_found_with_stale_cache(site: pathlib.Path) -> None:
    plugins = site / "twisted" / "plugins"
    cache = plugins / "dropin.cache"
    # A cache from before the plugin file existed, listing nothing.
    cache.write_bytes(pickle.dumps({}))
    old = os.stat(plugins / PLUGIN.name).st_mtime - 3600
    os.utime(cache, (old, old))
    assert list_plugins(site).strip() == "['mailframe']"
    # The cache was rewritten, and a second listing reads it.
    assert os.stat(cache).st_mtime > old
    assert "'mailframe'" in list_plugins(site)


def test_found_when_cache_cannot_be_written(site: pathlib.Path) -> None:
    # A directory where the cache file should be: neither root nor anyone
    # else can write the cache, or read it.
    (site / "twisted" / "plugins" / "dropin.cache").mkdir()
    assert list_plugins(site).strip() == "['mailframe']"


def test_twistd_help_after_install(tmp_path: pathlib.Path) -> None:
    twistd = pathlib.Path(sys.executable).parent / "twistd"
    if not twistd.exists():
        pytest.fail(f"{twistd} is missing: install with the README's command")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(twistd), "mailframe", "--help"], capture_output=True, text=True,
        timeout=60, cwd=str(tmp_path), env=env,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--listen", "--hostname", "--queue-dir", "--local-domain",
                   "--local-users", "--relay-network", "--max-message-size",
                   "--max-recipients", "--config"):
        assert option in result.stdout


def test_plugin_file_imports_nothing_of_mailframe() -> None:
    script = (
        "import runpy, sys; runpy.run_path(sys.argv[1]);"
        " print(sorted(m for m in sys.modules if m.startswith('mailframe')))"
    )
    result = subprocess.run([sys.executable, "-c", script, str(PLUGIN)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_init_in_twisted_plugins() -> None:
    assert not (REPO / "twisted" / "plugins" / "__init__.py").exists()
