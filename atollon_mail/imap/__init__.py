"""The IMAP server: its command parser, the rendering of messages (ENVELOPE,
BODYSTRUCTURE, body sections), FETCH and SEARCH, and the protocol that serves the
mailboxes' folders (mailbox x context) to standard mail clients."""
