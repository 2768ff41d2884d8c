"""The operator's dashboard: the page at /ui (pages.py, static/) and the JSON API it reads under /ui/api
(api_router.py, over the decision log's queries.py and stats.py)."""
