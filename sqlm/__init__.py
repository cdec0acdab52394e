"""sqlm: an LLM inference engine built like a database.

    import sqlm
    con = sqlm.connect()
    con.sql("SELECT generate('smollm2', 'What is the capital of France?', max_tokens => 16) AS answer").show()
"""
import catalog.threading_env  # noqa: F401  (before torch loads OpenMP)
from sqlm.connection import Connection, connect
from sqlm.result import Result

__all__ = ["connect", "Connection", "Result"]
