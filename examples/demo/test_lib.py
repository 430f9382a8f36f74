from lib import common_prefix


def test_common_prefix():
    assert common_prefix(
