"""What the appliance decides about mail received on port 25 before it says 250:
sender authentication (SPF, DKIM, DMARC, ARC) written as one Authentication-Results
header, trusted forwarders, DNS blocklists and a few cheap heuristics, and the spam
filter's answer, combined into one decision (checks.InboundChecks)."""
