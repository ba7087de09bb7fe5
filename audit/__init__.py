"""The audit trail: every event as a workspace's admins review it, its tables in the event
store's own database, and its tamper evidence (a hash chain with signed checkpoints).

It reads the `ledger` (the domain, the Ledger application, the settings); `ledger` never imports it.
"""
