"""Fixtures of the daemon tests."""
import pytest

from tests.support.daemon import OscListener


@pytest.fixture
def listener():
    """An OSC client that records everything it receives: give its port to the daemon as reply_port."""
    client = OscListener()
    yield client
    client.close()
