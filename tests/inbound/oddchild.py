"""A check process that misbehaves on purpose, for tests/inbound/test_checkprocess.py:
the real frame loop (inbound.checkprocess.serve) with a handler that, by the sender it
is asked about, hangs, prints, answers what may not be unpickled, raises,
answers something that is no finding, answers what cannot be
unpickled, or answers more than an answer may be; any other sender gets a finding of
one made-up blocklist listing (LISTED)."""

from __future__ import annotations

import os
import pickle
import sys
import time

from atollon_mail.inbound.checkprocess import MOST_ANSWER, _frames_only, _read_frame, serve
from atollon_mail.inbound.checks import Found
from atollon_mail.inbound.dnsbl import Listing

LISTED = Found(None, (Listing("odd.test", ("127.0.0.2",)),))


class Evil:
    """Would run a command if the appliance unpickled anything a child sends."""

    def __reduce__(self):
        return (os.system, ("true",))


class Unreadable:
    """Pickles fine, fails when unpickled (ValueError)."""

    def __reduce__(self):
        return (int, ("not a number",))


def handle(data, client_ip, helo, sender, forwarder, zones):
    if sender == "hangs@odd.test":
        time.sleep(3600)  # stuck: the appliance must not wait for this answer
    if sender == "noisy@odd.test":
        print("a library printing")  # neither reaches the appliance's end
        os.write(1, b"C code writing to fd 1\n")
    if sender == "evil@odd.test":
        return Evil()
    if sender == "raises@odd.test":
        raise ValueError("the handler broke")
    if sender == "nonsense@odd.test":
        return "no finding"
    if sender == "unreadable@odd.test":
        return Unreadable()
    if sender == "huge@odd.test":
        return b"x" * (MOST_ANSWER + 1)
    return LISTED


def main() -> None:
    instream, outstream = sys.stdin.buffer, _frames_only()
    first = _read_frame(instream)
    if first is None:
        return
    serve(instream, outstream, handle, pickle.loads(first[1])["threads"])


if __name__ == "__main__":
    main()
