"""An aiosmtpd handler for fault tests: a Maildir like aiosmtpd.handlers.Mailbox that
answers chosen recipients with an error, or drops their connection.

    PYTHONPATH=tests/smtp python3 -m aiosmtpd -n -l 127.0.0.1:PORT \
        -c faulty.FaultyMailbox MAILDIR RULE...

A RULE is PATTERN=ACTION or PATTERN=ACTION*COUNT. A recipient address that contains
PATTERN gets ACTION at RCPT TO, COUNT times (every time when no COUNT is given), and is
accepted afterwards. ACTION is a reply code (450, 451, 452 say "try later"; 550, 553
say "never") or "drop", which closes the connection without a reply.
"""

from aiosmtpd.handlers import Mailbox

TEXTS = {
    "421": "4.3.2 Service shutting down, try later",
    "450": "4.2.1 Mailbox busy, try later",
    "451": "4.3.0 Local error, try later",
    "452": "4.3.1 Insufficient storage, try later",
    "550": "5.1.1 Mailbox unavailable",
    "553": "5.1.3 Mailbox name not allowed",
    "554": "5.7.1 Transaction failed",
}


class FaultyMailbox(Mailbox):
    def __init__(self, mail_dir, rules):
        super().__init__(mail_dir)
        # [pattern, action, remaining (None: always)]
        self.rules = rules

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) < 1:
            parser.error("usage: MAILDIR [PATTERN=ACTION[*COUNT]]...")
        rules = []
        for rule in args[1:]:
            pattern, sep, action = rule.partition("=")
            if not sep or not pattern:
                parser.error(f"bad rule {rule!r}: want PATTERN=ACTION[*COUNT]")
            count = None
            if "*" in action:
                action, _, n = action.partition("*")
                count = int(n)
            if action != "drop" and not (len(action) == 3 and action.isdigit()):
                parser.error(f"bad action {action!r}: want a reply code or 'drop'")
            rules.append([pattern, action, count])
        return cls(args[0], rules)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        for rule in self.rules:
            pattern, action, remaining = rule
            if pattern in address and remaining != 0:
                if remaining is not None:
                    rule[2] = remaining - 1
                if action == "drop":
                    server.transport.close()
                    return "421 4.3.2 Closing connection"
                return f"{action} {TEXTS.get(action, 'Refused by the test server')}"
        envelope.rcpt_tos.append(address)
        return "250 OK"
