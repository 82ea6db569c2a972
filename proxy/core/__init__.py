"""The canonical conversation and what every layer shares: errors, miss causes, logging, token
prefixes, stream framing, body budgets.
"""
