package main

import (
	"testing"
	"time"
)

func TestZZExplore(t *testing.T) {
	r := redisAt(t)
	for _, env := range []map[string]string{{}, {"HISTORY": "off"}, {"SUBSCRIBE_MODE": "user"}, {"REDIS_CLUSTER_ADDRS": r.addr(), "SUBSCRIBE_MODE": "user", "PUBSUB_SHARDED": "true"}} {
		env["LOG_LEVEL"] = "info"
		td := startDaemon(t, r, env)
		time.Sleep(2 * time.Second)
		code, body, _ := get(td.baseURL + "/ready")
		t.Logf("%v ready %d %s\nlogs:\n%s", env, code, body, td.logs.String())
		td.stop()
	}
}
