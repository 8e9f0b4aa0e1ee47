"""Analysis of stored market data: pure pandas/numpy functions on the frames the readers return.

Nothing here reads or writes storage, starts Spark or draws: callers pass frames in and get frames
(or numbers) back, so every function is tested on small hand-made frames.
"""
