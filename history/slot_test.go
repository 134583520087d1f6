package history

import (
	"testing"
)

func TestKeySlotIsRedisClusters(t *testing.T) {
	for key, want := range map[string]int{
		// CRC16/XMODEM("123456789") is 0x31C3, the Cluster spec's check value.
		"123456789":                            0x31C3,
		"{123456789}.history":                  0x31C3,
		"a{}b":                                 Slot("a{}b"), // an empty tag hashes the whole name
		"workflow:events:alice":                Slot("fanout:history:{workflow:events:alice}"),
		"x{123456789}{other}":                  0x31C3,
		"no-tag-{only-opening":                 Slot("no-tag-{only-opening"),
		"fanout:history:{workflow:events:bob}": Slot("workflow:events:bob"),
	} {
		if got := Slot(key); got != want {
			t.Errorf("Slot(%q) = %d, want %d", key, got, want)
		}
	}
	if Slot("a{}b") == Slot("") {
		t.Error("an empty hash tag must not hash to the empty name's slot")
	}
}
