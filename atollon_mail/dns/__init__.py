"""DNS advice and live checks for the domains of the appliance.

`lookup` asks the configured resolvers (blocking dnspython calls: run them in a thread
pool, never on the reactor thread), `spfrecord` reads, merges and counts SPF records,
`advisor` proposes the records a domain needs, `checks` tests what is published, and
`watcher` re-checks every domain on a timer and mails the admins what changed.
"""
