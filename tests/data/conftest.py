import pytest

from lipcert import data


@pytest.fixture(autouse=True)
def _isolated_data_env(tmp_path_factory, monkeypatch):
    """Each test starts with an empty in-process cache, no LIPCERT_DATA_DIR and a private disk cache."""
    monkeypatch.delenv("LIPCERT_DATA_DIR", raising=False)
    monkeypatch.setenv("LIPCERT_CACHE_DIR", str(tmp_path_factory.mktemp("lipcert-cache")))
    data.clear_cache()
    yield
    data.clear_cache()
