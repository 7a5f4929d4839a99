"""An aiosmtpd handler for fault tests: a Maildir like aiosmtpd.handlers.Mailbox that
answers chosen recipients with an error, or drops their connection, at RCPT TO or
after the message data.

    PYTHONPATH=tests/smtp python3 -m aiosmtpd -n -l 127.0.0.1:PORT \
        -c faulty.FaultyMailbox MAILDIR RULE...

A RULE is PATTERN=ACTION or PATTERN=ACTION*COUNT. A recipient address that contains
PATTERN gets ACTION, COUNT times (every time when no COUNT is given), and is accepted
afterwards. ACTION is one of:

- a reply code at RCPT TO (450, 451, 452 say "try later"; 550, 553 say "never"),
  quoting the recipient as Postfix does (`450 4.2.1 <jane@example.com>: Mailbox busy`);
- "drop": close the connection at RCPT TO, without a reply;
- "accept-drop": at the end of the message data, store the message in the Maildir,
  then close the connection without a reply (it arrived, but the client cannot know);
- a reply code and "data" (e.g. "451data"): answer the end of the message data with
  that code and store nothing. The refused message's Message-ID is appended to
  `refused.log` beside the Maildir, one per line.
"""

import os

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


def is_code(action):
    return len(action) == 3 and action.isdigit()


def at_data(action):
    """Whether ACTION fires at the end of the message data (else at RCPT TO)."""
    return action == "accept-drop" or (action.endswith("data") and is_code(action[:-4]))


class FaultyMailbox(Mailbox):
    def __init__(self, mail_dir, rules):
        super().__init__(mail_dir)
        # [pattern, action, remaining (None: always)]
        self.rules = rules
        self.refused_log = os.path.join(os.path.dirname(os.path.abspath(mail_dir)), "refused.log")

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
            if action != "drop" and not is_code(action) and not at_data(action):
                parser.error(f"bad action {action!r}: want a reply code, 'drop', 'accept-drop' or CODEdata")
            rules.append([pattern, action, count])
        return cls(args[0], rules)

    def fire(self, addresses, data_phase):
        """The first rule of this phase that applies to ADDRESSES, counted down; or None."""
        for rule in self.rules:
            pattern, action, remaining = rule
            if at_data(action) != data_phase or remaining == 0:
                continue
            if any(pattern in a for a in addresses):
                if remaining is not None:
                    rule[2] = remaining - 1
                return action
        return None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        action = self.fire([address], data_phase=False)
        if action == "drop":
            server.transport.close()
            return "421 4.3.2 Closing connection"
        if action is not None:
            # as Postfix does, the refusal quotes the recipient: a client must not
            # log or store it as it is
            status, _, text = TEXTS.get(action, "5.0.0 Refused by the test server").partition(" ")
            return f"{action} {status} <{address}>: {text}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        action = self.fire(envelope.rcpt_tos, data_phase=True)
        if action is None:
            return await super().handle_DATA(server, session, envelope)
        message = self.prepare_message(session, envelope)
        if action == "accept-drop":
            self.handle_message(message)
            server.transport.close()
            # written to a closed transport: the client never reads it
            return "250 OK"
        with open(self.refused_log, "a") as log:
            log.write(f"{message.get('Message-ID', '').strip()}\n")
        code = action[:3]
        return f"{code} {TEXTS.get(code, 'Refused by the test server')}"
