#!/usr/bin/env bash
# Remakes the SNS fixtures of src/bounces/ses.rs's tests. Not run by the tests.
#
# signing-key.pem / signing-cert.pem stand for SNS's signing certificate (a
# self-signed test certificate; the tests serve it for any SigningCertURL);
# other-cert.pem is a certificate of another key. Made with:
#   openssl req -x509 -newkey rsa:2048 -nodes -keyout signing-key.pem -out signing-cert.pem \
#     -days 36500 -subj "/O=reverify test fixture/CN=sns.test.invalid"
#
# sns-bounce-v1.json is ses-bounce.json delivered by SNS as a Notification with a
# Subject, signed with SignatureVersion 1 (SHA1withRSA) over the canonical string
# AWS documents: "Key\nvalue\n" for Message, MessageId, Subject (when present),
# Timestamp, TopicArn and Type, in that order. The tests sign their SignatureVersion
# 2 messages themselves (aws-lc-rs has no SHA-1 signing).
set -euo pipefail
cd "$(dirname "$0")"

message=$(jq -c . ses-bounce.json)
envelope=$(jq -n --arg message "$message" '{
  Type: "Notification",
  MessageId: "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
  TopicArn: "arn:aws:sns:us-east-1:123456789012:reverify-bounces",
  Subject: "Amazon SES Email Event Notification",
  Message: $message,
  Timestamp: "2026-12-07T15:00:00.000Z",
  SignatureVersion: "1",
  SigningCertURL: "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem",
  UnsubscribeURL: "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-east-1:123456789012:reverify-bounces:0b1c2d3e"
}')

# jq -j writes each value raw, with no newline of its own
canonical=$(mktemp)
trap 'rm -f "$canonical"' EXIT
jq -j '"Message\n\(.Message)\nMessageId\n\(.MessageId)\nSubject\n\(.Subject)\nTimestamp\n\(.Timestamp)\nTopicArn\n\(.TopicArn)\nType\n\(.Type)\n"' \
  <<<"$envelope" >"$canonical"
signature=$(openssl dgst -sha1 -sign signing-key.pem "$canonical" | base64 -w0)
jq --arg sig "$signature" '. + {Signature: $sig}' <<<"$envelope" >sns-bounce-v1.json
echo "wrote sns-bounce-v1.json"
