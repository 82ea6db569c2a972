"""What every slot holds and where a request goes: routing and the slot table (pure), the
manager that performs it.
"""
