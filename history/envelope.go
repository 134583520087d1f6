package history

import "strings"

// An envelope is how the publish scripts (PublishSource,
// PublishShardedSource) publish an event they have just appended: its id,
// then the payload, so that every instance learns the id from the message
// itself and delivers the event without asking Redis for it:
//
//	#1733050000000-0 {"type":"workflow_started"}
//
// '#', the id, one space, then the payload byte for byte. The daemon
// unwraps it: clients get the payload, fanout.v1 clients with the id. An
// envelope is not valid JSON, so an instance of a version before envelopes
// drops it as an invalid payload (counted and logged) instead of
// forwarding it; see docs/history.md for a mixed-version upgrade. A plain
// PUBLISH of a JSON payload is never taken for one: JSON cannot start
// with '#'.
const envelopeMark = '#'

// Envelope returns the message the publish scripts publish for an event
// appended with id.
func Envelope(id, payload string) string {
	return string(envelopeMark) + id + " " + payload
}

// IsEnvelope reports whether a published message is meant as an envelope
// (it starts with '#'); OpenEnvelope says whether it is a well-formed one.
func IsEnvelope(msg string) bool { return len(msg) > 0 && msg[0] == envelopeMark }

// OpenEnvelope returns the id and the payload of an envelope; ok is false
// for a message that is not one, or whose id is not an event id.
func OpenEnvelope(msg string) (id, payload string, ok bool) {
	if !IsEnvelope(msg) {
		return "", "", false
	}
	id, payload, found := strings.Cut(msg[1:], " ")
	if !found {
		return "", "", false
	}
	if _, valid := ParseID(id); !valid {
		return "", "", false
	}
	return id, payload, true
}
