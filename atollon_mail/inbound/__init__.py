"""What the appliance decides about mail received from the Internet: sender
authentication, the spam filter, and the verdicts that become Authentication-Results."""
