"""The trio side of trioflow: instance, lane/branch and supervisor actors.

Internal: the engine (``trioflow.open_engine``) and ``trioflow.execute_workflow`` drive them.
"""
