"""Market-data sources, one module per API: `binance` and `coingecko`, over the shared `http` layer.

Each source turns the API's raw payload into typed records right where it is parsed (floats, aware
UTC datetimes, standard symbols). Missing, null or unparsable fields become None: never a made-up value.
"""
