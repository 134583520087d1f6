// Package redisx holds the Redis mechanisms fanout needs that are not its
// policy: building the client of a deployment (one Redis, Sentinel or
// Cluster), checking a deployment's seeds at start-up, reading MOVED
// replies, the one retry backoff, and the one owner of a Cluster client's
// slot-map refresh. It imports go-redis and nothing of fanout.
package redisx
