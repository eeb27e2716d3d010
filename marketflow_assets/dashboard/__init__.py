"""The analyst dashboard: ``marketflow dashboard`` serves ``app.py`` (Streamlit) on 127.0.0.1.

``queries.py`` holds every SQL statement, ``view.py`` the plain functions behind the numbers,
``charts.py`` the plotly figures, ``command.py`` the CLI entry point.
"""
