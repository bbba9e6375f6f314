"""Operator commands: the `arzani` Click group."""
