"""Every Dagster object of Marketflow, one folder per domain (``raw_prices``, ``indicators``,
``forecasts``, ``monitoring``), the pieces they share in ``common/``, and ``maintenance.py``.

``marketflow_assets/definitions.py`` assembles them; code outside ``defs/`` defines no Dagster
object.
"""
