"""Fixtures of the daemon tests."""
import pytest

from tests.support.daemon import OscListener, make_reference


@pytest.fixture
def listener():
    """An OSC client that records everything it receives: give its port to the daemon as reply_port."""
    client = OscListener()
    yield client
    client.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A 3-s reference song in the style the daemon tests convert toward."""
    return make_reference(tmp_path_factory.mktemp("reference"), seconds=3.0)
