"""The sweep spec: its pydantic schema (``sweep.py``) and the search space of each technique (``space.py``)."""
