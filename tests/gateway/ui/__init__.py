"""The dashboard (/ui and its JSON API /ui/api) on a running gateway: the API's answers in test_api_*.py, the page
in a real browser in test_browser*.py. Fixtures are in conftest.py, the helpers they share in support.py."""
