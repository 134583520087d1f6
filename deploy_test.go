package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// The deployment files in deploy/ cannot be run here (no Docker, no
// Kubernetes). These tests parse them and hold them to the code: every
// variable they set is one the daemon reads with a value it accepts (asked
// of loadConfig itself, so the check cannot go stale), their ports are the
// port the daemon listens on, their probe paths answer as probes must on a
// real daemon, and the objects that refer to each other agree.

// standInSecret replaces what a deployment file leaves to its operator (a
// compose ${VARIABLE}, a Kubernetes Secret): long enough for any key.
const standInSecret = "stand-in-for-a-secret-0123456789abcdef0123456789"

// checkedEnv is what loadConfig made of a deployment file's environment.
type checkedEnv struct {
	cfg Config
	// port is the port the daemon listens on with that environment.
	port int
}

// daemonConfigOf loads the daemon's configuration from env, as the daemon
// would in that container, and reports every variable env sets that the
// daemon does not read, and an environment the daemon would refuse.
func daemonConfigOf(t *testing.T, where string, env map[string]string) checkedEnv {
	t.Helper()
	read := map[string]bool{}
	cfg, err := loadConfig(func(name string) (string, bool) {
		read[name] = true
		v, ok := env[name]
		return v, ok
	})
	if err != nil {
		t.Errorf("%s: the daemon refuses this environment: %v", where, err)
	}
	for _, name := range slices.Sorted(maps.Keys(env)) {
		if !read[name] {
			t.Errorf("%s sets %s, which the daemon does not read (with this environment)", where, name)
		}
	}
	_, portText, err := net.SplitHostPort(cfg.ListenAddr)
	if err != nil {
		t.Fatalf("%s: listen address %q: %v", where, cfg.ListenAddr, err)
	}
	port, _ := strconv.Atoi(portText)
	return checkedEnv{cfg: cfg, port: port}
}

// requireScaleOutEnv reports an instance environment that is not the one
// deploy/ documents: SUBSCRIBE_MODE=user, and a JWT key, because protected
// mode refuses every client that is not on the container's own loopback.
func requireScaleOutEnv(t *testing.T, where string, env checkedEnv) {
	t.Helper()
	if env.cfg.SubscribeMode != subscribeUser {
		t.Errorf("%s: SUBSCRIBE_MODE is %q, want %q", where, env.cfg.SubscribeMode, subscribeUser)
	}
	if env.cfg.AuthMode != authJWT {
		t.Errorf("%s: AUTH_MODE is %q, want %q: in a container protected mode refuses every client", where, env.cfg.AuthMode, authJWT)
	}
}

// probePaths are the HTTP paths the deployment files probe, by what they
// must say: ready ones answer 503 while Redis is unreachable, live ones
// 200 whatever Redis does.
type probePaths struct {
	ready, live []string
}

// requireProbesAnswer requests every probe path from real daemons: all
// answer 200 on a daemon whose Redis subscription is confirmed; on one
// whose Redis is unreachable, readiness paths answer 503 and liveness
// paths still 200.
func requireProbesAnswer(t *testing.T, probes probePaths) {
	if len(probes.ready) == 0 || len(probes.live) == 0 {
		t.Fatalf("deployment files probe readiness on %v and liveness on %v: want both", probes.ready, probes.live)
	}
	status := func(td *testDaemon, path string) int {
		code, _, err := get(td.baseURL + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return code
	}
	up := startDaemon(t, startRedis(t), map[string]string{"LOG_LEVEL": "warn"})
	up.waitReady()
	for _, path := range slices.Concat(probes.ready, probes.live) {
		if got := status(up, path); got != http.StatusOK {
			t.Errorf("probe path %s answers %d on a ready daemon, want 200", path, got)
		}
	}
	// redisAt is a port where no Redis runs.
	down := startDaemon(t, redisAt(t), map[string]string{"LOG_LEVEL": "error"})
	eventually(t, 5*time.Second, "daemon without Redis serving HTTP", func() bool {
		code, _, err := get(down.baseURL + "/health")
		return err == nil && code == http.StatusOK
	})
	for _, path := range probes.ready {
		if got := status(down, path); got != http.StatusServiceUnavailable {
			t.Errorf("readiness probe path %s answers %d on a daemon without Redis, want 503", path, got)
		}
	}
	for _, path := range probes.live {
		if got := status(down, path); got != http.StatusOK {
			t.Errorf("liveness probe path %s answers %d on a daemon without Redis, want 200 (a Redis outage must not restart pods)", path, got)
		}
	}
}

// deployNginx is what deploy/nginx.conf says about its neighbours.
type deployNginx struct {
	// upstreams are the host:port of each server of the fanout upstream.
	upstreams []string
	// listenPort is the port nginx listens on.
	listenPort int
}

func readDeployNginx(t *testing.T) deployNginx {
	t.Helper()
	b, err := os.ReadFile("deploy/nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := string(b)
	var n deployNginx
	block := regexp.MustCompile(`(?s)upstream\s+\w+\s*\{(.*?)\}`).FindStringSubmatch(conf)
	if block == nil {
		t.Fatal("deploy/nginx.conf has no upstream block")
	}
	for _, m := range regexp.MustCompile(`(?m)^\s*server\s+([^\s;]+)[^;]*;`).FindAllStringSubmatch(block[1], -1) {
		n.upstreams = append(n.upstreams, m[1])
	}
	listen := regexp.MustCompile(`(?m)^\s*listen\s+(\d+)(?:\s+[a-z_]+(?:=\S+)?)*\s*;`).FindAllStringSubmatch(conf, -1)
	if len(n.upstreams) == 0 || len(listen) != 1 {
		t.Fatalf("deploy/nginx.conf: upstream servers %v, listen %v: want servers and one listen port", n.upstreams, listen)
	}
	n.listenPort, _ = strconv.Atoi(listen[0][1])
	return n
}

// composeFile is the part of docker-compose.yml the test reads.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
}

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	} `yaml:"build"`
	Environment     composeEnv `yaml:"environment"`
	StopGracePeriod string     `yaml:"stop_grace_period"`
	Healthcheck     *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	DependsOn map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Volumes []string `yaml:"volumes"`
	Ports   []string `yaml:"ports"`
	Expose  []string `yaml:"expose"`
}

// composeEnv is a service's environment, written as a map or as a list
// of NAME=value.
type composeEnv map[string]string

func (e *composeEnv) UnmarshalYAML(node *yaml.Node) error {
	*e = composeEnv{}
	switch node.Kind {
	case yaml.MappingNode:
		var m map[string]string
		if err := node.Decode(&m); err != nil {
			return err
		}
		*e = m
	case yaml.SequenceNode:
		var list []string
		if err := node.Decode(&list); err != nil {
			return err
		}
		for _, item := range list {
			name, value, _ := strings.Cut(item, "=")
			(*e)[name] = value
		}
	default:
		return fmt.Errorf("line %d: environment must be a map or a list", node.Line)
	}
	return nil
}

// composeInterpolation is a whole value taken from the operator's
// environment: ${NAME}, ${NAME:?message} or ${NAME:-default}.
var composeInterpolation = regexp.MustCompile(`^\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}$`)

// resolveCompose returns env with each ${…} value replaced as compose
// would: the default when one is given, else standInSecret.
func resolveCompose(t *testing.T, where string, env composeEnv) (map[string]string, map[string]bool) {
	t.Helper()
	resolved := map[string]string{}
	fromOperator := map[string]bool{}
	for name, value := range env {
		if m := composeInterpolation.FindStringSubmatch(value); m != nil {
			fromOperator[name] = true
			if strings.HasSuffix(m[2], "-") {
				value = m[3]
			} else {
				value = standInSecret
			}
		} else if strings.Contains(value, "$") {
			t.Errorf("%s: %s=%q: deploy_test.go resolves only whole ${NAME} values", where, name, value)
		}
		resolved[name] = value
	}
	return resolved, fromOperator
}

// httpURLIn returns the http:// URL among a healthcheck's words.
func httpURLIn(words []string) (*url.URL, bool) {
	for _, w := range words {
		for _, f := range strings.Fields(w) {
			if strings.HasPrefix(f, "http://") {
				u, err := url.Parse(f)
				return u, err == nil
			}
		}
	}
	return nil, false
}

func urlPort(u *url.URL) int {
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		return 80
	}
	return port
}

// checkCompose checks deploy/docker-compose.yml and returns the paths its
// healthchecks probe.
func checkCompose(t *testing.T, nginx deployNginx) probePaths {
	b, err := os.ReadFile("deploy/docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var compose composeFile
	if err := yaml.Unmarshal(b, &compose); err != nil {
		t.Fatalf("deploy/docker-compose.yml: %v", err)
	}
	var probes probePaths

	// The instances are the services nginx's upstream names, on the port
	// each listens on.
	var instances []string
	for _, server := range nginx.upstreams {
		host, portText, err := net.SplitHostPort(server)
		if err != nil {
			t.Fatalf("deploy/nginx.conf upstream server %q: want host:port", server)
		}
		instances = append(instances, host)
		svc, ok := compose.Services[host]
		where := "docker-compose.yml service " + host
		if !ok {
			t.Errorf("deploy/nginx.conf's upstream names %s, which docker-compose.yml has no service for", host)
			continue
		}
		if svc.Build == nil {
			t.Errorf("%s is not built from the repository's Dockerfile", where)
		} else {
			dockerfile := filepath.Join("deploy", svc.Build.Context, cmpOr(svc.Build.Dockerfile, "Dockerfile"))
			if abs, _ := filepath.Abs(dockerfile); abs != mustAbs(t, "Dockerfile") {
				t.Errorf("%s builds %s, want the repository's Dockerfile", where, dockerfile)
			}
		}
		envVars, fromOperator := resolveCompose(t, where, svc.Environment)
		env := daemonConfigOf(t, where, envVars)
		requireScaleOutEnv(t, where, env)
		if !fromOperator["JWT_SECRET"] {
			t.Errorf("%s: JWT_SECRET must come from the operator's environment (${JWT_SECRET:?…}), not be written in the file", where)
		}
		if port, _ := strconv.Atoi(portText); port != env.port {
			t.Errorf("deploy/nginx.conf sends to %s, but %s listens on %d", server, host, env.port)
		}
		for _, exposed := range svc.Expose {
			if exposed != strconv.Itoa(env.port) {
				t.Errorf("%s exposes %s, but listens on %d", where, exposed, env.port)
			}
		}
		if svc.Healthcheck == nil {
			t.Errorf("%s has no healthcheck", where)
		} else if u, ok := httpURLIn(svc.Healthcheck.Test); !ok {
			t.Errorf("%s healthcheck %q requests no http:// URL", where, svc.Healthcheck.Test)
		} else {
			if urlPort(u) != env.port {
				t.Errorf("%s healthcheck requests port %d, but the daemon listens on %d", where, urlPort(u), env.port)
			}
			// nginx waits for this healthcheck: it is a readiness check.
			probes.ready = append(probes.ready, u.Path)
		}
		if grace, err := time.ParseDuration(svc.StopGracePeriod); err != nil || grace <= env.cfg.ShutdownTimeout {
			t.Errorf("%s: stop_grace_period %q, want a duration above SHUTDOWN_TIMEOUT (%v), or clients miss their 1001", where, svc.StopGracePeriod, env.cfg.ShutdownTimeout)
		}
		redisHost, _, _ := net.SplitHostPort(env.cfg.Redis.Addr)
		switch redisService, ok := compose.Services[redisHost]; {
		case !ok:
			t.Errorf("%s: Redis address %s is no service of docker-compose.yml", where, env.cfg.Redis.Addr)
		case redisService.Healthcheck == nil:
			t.Errorf("docker-compose.yml: the Redis service has no healthcheck for %s to wait on", where)
		}
		if svc.DependsOn[redisHost].Condition != "service_healthy" {
			t.Errorf("%s: depends_on %s is %+v, want condition service_healthy", where, redisHost, svc.DependsOn[redisHost])
		}
	}

	// nginx runs deploy/nginx.conf, publishes its listen port and waits
	// for the instances.
	var proxies int
	for name, svc := range compose.Services {
		if !strings.HasPrefix(svc.Image, "nginx:") {
			continue
		}
		proxies++
		where := "docker-compose.yml service " + name
		if !slices.ContainsFunc(svc.Volumes, func(v string) bool {
			parts := strings.Split(v, ":")
			return len(parts) >= 2 && filepath.Join("deploy", parts[0]) == filepath.Join("deploy", "nginx.conf") && parts[1] == "/etc/nginx/nginx.conf"
		}) {
			t.Errorf("%s mounts %q, want ./nginx.conf (deploy/nginx.conf) as /etc/nginx/nginx.conf", where, svc.Volumes)
		}
		if !slices.ContainsFunc(svc.Ports, func(p string) bool {
			return strings.HasSuffix(p, ":"+strconv.Itoa(nginx.listenPort))
		}) {
			t.Errorf("%s publishes %q, want nginx.conf's listen port %d", where, svc.Ports, nginx.listenPort)
		}
		for _, instance := range instances {
			if _, ok := svc.DependsOn[instance]; !ok {
				t.Errorf("%s does not depend on %s", where, instance)
			}
		}
	}
	if proxies != 1 {
		t.Errorf("docker-compose.yml has %d nginx services, want 1", proxies)
	}
	return probes
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func mustAbs(t *testing.T, path string) string {
	t.Helper()
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// k8sObject is one document of a Kubernetes manifest; spec is decoded by
// kind.
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name        string            `yaml:"name"`
		Labels      map[string]string `yaml:"labels"`
		Annotations map[string]string `yaml:"annotations"`
	} `yaml:"metadata"`
	Spec yaml.Node `yaml:"spec"`
	// file is the manifest the object comes from.
	file string
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

// selects reports whether the selector is not empty and labels match it.
func (s labelSelector) selects(labels map[string]string) bool {
	if len(s.MatchLabels) == 0 {
		return false
	}
	for k, v := range s.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

type k8sDeploymentSpec struct {
	Replicas int           `yaml:"replicas"`
	Selector labelSelector `yaml:"selector"`
	Template struct {
		Metadata struct {
			Labels map[string]string `yaml:"labels"`
		} `yaml:"metadata"`
		Spec struct {
			TerminationGracePeriodSeconds *int           `yaml:"terminationGracePeriodSeconds"`
			Containers                    []k8sContainer `yaml:"containers"`
		} `yaml:"spec"`
	} `yaml:"template"`
}

type k8sContainer struct {
	Name  string `yaml:"name"`
	Image string `yaml:"image"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	Env []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
	Lifecycle      struct {
		PreStop *struct {
			Exec *struct {
				Command []string `yaml:"command"`
			} `yaml:"exec"`
			Sleep *struct {
				Seconds int `yaml:"seconds"`
			} `yaml:"sleep"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		// Port is a number or a container port's name.
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
}

// resolvePort returns the container port that port (a number or a port
// name) designates, or 0.
func (c k8sContainer) resolvePort(port string) int {
	for _, p := range c.Ports {
		if p.Name == port || strconv.Itoa(p.ContainerPort) == port {
			return p.ContainerPort
		}
	}
	return 0
}

type k8sServiceSpec struct {
	Selector map[string]string `yaml:"selector"`
	Ports    []k8sServicePort  `yaml:"ports"`
}

type k8sServicePort struct {
	Name string `yaml:"name"`
	Port int    `yaml:"port"`
	// TargetPort is a number or a container port's name.
	TargetPort string `yaml:"targetPort"`
}

type k8sPDBSpec struct {
	MaxUnavailable *int          `yaml:"maxUnavailable"`
	Selector       labelSelector `yaml:"selector"`
}

type k8sIngressSpec struct {
	Rules []struct {
		HTTP struct {
			Paths []struct {
				Path    string `yaml:"path"`
				Backend struct {
					Service struct {
						Name string `yaml:"name"`
						Port struct {
							Name   string `yaml:"name"`
							Number int    `yaml:"number"`
						} `yaml:"port"`
					} `yaml:"service"`
				} `yaml:"backend"`
			} `yaml:"paths"`
		} `yaml:"http"`
	} `yaml:"rules"`
}

// readK8sManifests parses every document of every deploy/k8s/*.yaml.
func readK8sManifests(t *testing.T) []k8sObject {
	t.Helper()
	files, err := filepath.Glob("deploy/k8s/*.y*ml")
	if err != nil || len(files) == 0 {
		t.Fatalf("deploy/k8s holds no manifest (%v)", err)
	}
	var objects []k8sObject
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var obj k8sObject
			err := dec.Decode(&obj)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if obj.Kind == "" {
				continue // an empty document
			}
			obj.file = file
			objects = append(objects, obj)
		}
	}
	return objects
}

// decodeSpec decodes obj's spec into spec, failing t with the file's name.
func decodeSpec(t *testing.T, obj k8sObject, spec any) {
	t.Helper()
	if err := obj.Spec.Decode(spec); err != nil {
		t.Fatalf("%s: %s %s spec: %v", obj.file, obj.Kind, obj.Metadata.Name, err)
	}
}

// checkK8s checks the manifests of deploy/k8s and returns the paths their
// probes request.
func checkK8s(t *testing.T) probePaths {
	var (
		probes     probePaths
		deployment *k8sDeploymentSpec
		container  k8sContainer
		env        checkedEnv
		services   = map[string]k8sServiceSpec{}
		pdbs       []k8sObject
		ingresses  []k8sObject
	)
	for _, obj := range readK8sManifests(t) {
		switch obj.Kind {
		case "Deployment":
			if deployment != nil {
				t.Fatalf("%s: a second Deployment; the test checks one", obj.file)
			}
			deployment = &k8sDeploymentSpec{}
			decodeSpec(t, obj, deployment)
		case "Service":
			var spec k8sServiceSpec
			decodeSpec(t, obj, &spec)
			services[obj.Metadata.Name] = spec
		case "PodDisruptionBudget":
			pdbs = append(pdbs, obj)
		case "Ingress":
			ingresses = append(ingresses, obj)
		default:
			t.Errorf("%s: %s %s: deploy_test.go does not check this kind; teach it to", obj.file, obj.Kind, obj.Metadata.Name)
		}
	}
	if deployment == nil || len(services) == 0 || len(pdbs) == 0 {
		t.Fatalf("deploy/k8s: want a Deployment, a Service and a PodDisruptionBudget")
	}

	// The Deployment.
	podLabels := deployment.Template.Metadata.Labels
	if !deployment.Selector.selects(podLabels) {
		t.Errorf("Deployment selector %v does not select its pods' labels %v", deployment.Selector.MatchLabels, podLabels)
	}
	if deployment.Replicas < 2 {
		t.Errorf("Deployment has %d replicas: a drain needs other pods for its clients", deployment.Replicas)
	}
	if len(deployment.Template.Spec.Containers) != 1 {
		t.Fatalf("Deployment has %d containers, want the daemon alone", len(deployment.Template.Spec.Containers))
	}
	container = deployment.Template.Spec.Containers[0]
	vars := map[string]string{}
	for _, e := range container.Env {
		switch {
		case e.ValueFrom == nil:
			vars[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			vars[e.Name] = standInSecret
		default:
			t.Errorf("Deployment env %s: deploy_test.go resolves only value and secretKeyRef", e.Name)
		}
		if e.Name == "JWT_SECRET" && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
			t.Errorf("Deployment: JWT_SECRET must come from a Secret, not be written in the manifest")
		}
	}
	env = daemonConfigOf(t, "Deployment container "+container.Name, vars)
	requireScaleOutEnv(t, "Deployment container "+container.Name, env)
	if len(container.Ports) == 0 {
		t.Errorf("Deployment container declares no port")
	}
	for _, p := range container.Ports {
		if p.ContainerPort != env.port {
			t.Errorf("Deployment container port %s is %d, but the daemon listens on %d", p.Name, p.ContainerPort, env.port)
		}
	}
	for _, pr := range []struct {
		what  string
		probe *k8sProbe
		paths *[]string
	}{
		{"readinessProbe", container.ReadinessProbe, &probes.ready},
		{"livenessProbe", container.LivenessProbe, &probes.live},
	} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("Deployment container has no HTTP %s", pr.what)
			continue
		}
		if port := container.resolvePort(pr.probe.HTTPGet.Port); port != env.port {
			t.Errorf("Deployment %s requests port %q (%d), but the daemon listens on %d", pr.what, pr.probe.HTTPGet.Port, port, env.port)
		}
		*pr.paths = append(*pr.paths, pr.probe.HTTPGet.Path)
	}
	var preStop time.Duration
	switch ps := container.Lifecycle.PreStop; {
	case ps == nil:
		t.Errorf("Deployment container has no preStop: SIGTERM would come while the pod is still an endpoint")
	case ps.Sleep != nil:
		preStop = time.Duration(ps.Sleep.Seconds) * time.Second
	case ps.Exec != nil && len(ps.Exec.Command) == 2 && ps.Exec.Command[0] == "sleep":
		seconds, err := strconv.Atoi(ps.Exec.Command[1])
		if err != nil {
			t.Errorf("Deployment preStop %q: want sleep with whole seconds", ps.Exec.Command)
		}
		preStop = time.Duration(seconds) * time.Second
	default:
		t.Errorf("Deployment preStop: want [sleep N] or sleep.seconds")
	}
	if preStop <= 0 {
		t.Errorf("Deployment preStop waits %v: want a few seconds for the endpoint to leave the Service", preStop)
	}
	grace := 30 * time.Second // Kubernetes' default
	if g := deployment.Template.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	if preStop+env.cfg.ShutdownTimeout >= grace {
		t.Errorf("Deployment: preStop %v + SHUTDOWN_TIMEOUT %v do not fit in terminationGracePeriodSeconds (%v)", preStop, env.cfg.ShutdownTimeout, grace)
	}
	if container.Resources.Requests["memory"] == "" || container.Resources.Limits["memory"] == "" {
		t.Errorf("Deployment container resources %+v: want a memory request and limit", container.Resources)
	}

	// The Service sends to the daemon's port of the Deployment's pods.
	for name, svc := range services {
		if !(labelSelector{MatchLabels: svc.Selector}).selects(podLabels) {
			t.Errorf("Service %s selector %v does not select the Deployment's pods %v", name, svc.Selector, podLabels)
		}
		for _, p := range svc.Ports {
			if port := container.resolvePort(cmpOr(p.TargetPort, strconv.Itoa(p.Port))); port != env.port {
				t.Errorf("Service %s port %d sends to targetPort %q (%d), but the daemon listens on %d", name, p.Port, p.TargetPort, port, env.port)
			}
		}
	}

	// The PodDisruptionBudget covers the Deployment's pods, one at a time.
	for _, obj := range pdbs {
		var spec k8sPDBSpec
		decodeSpec(t, obj, &spec)
		if !spec.Selector.selects(podLabels) {
			t.Errorf("PodDisruptionBudget %s selector %v does not select the Deployment's pods %v", obj.Metadata.Name, spec.Selector.MatchLabels, podLabels)
		}
		if spec.MaxUnavailable == nil || *spec.MaxUnavailable != 1 {
			t.Errorf("PodDisruptionBudget %s: want maxUnavailable 1", obj.Metadata.Name)
		}
	}

	// An Ingress sends to a Service port, and its proxy outlives the pings.
	for _, obj := range ingresses {
		var spec k8sIngressSpec
		decodeSpec(t, obj, &spec)
		for _, rule := range spec.Rules {
			for _, path := range rule.HTTP.Paths {
				backend := path.Backend.Service
				svc, ok := services[backend.Name]
				if !ok {
					t.Errorf("Ingress %s sends %s to Service %q, which deploy/k8s does not define", obj.Metadata.Name, path.Path, backend.Name)
					continue
				}
				if !slices.ContainsFunc(svc.Ports, func(p k8sServicePort) bool {
					return (backend.Port.Name != "" && p.Name == backend.Port.Name) || (backend.Port.Number != 0 && p.Port == backend.Port.Number)
				}) {
					t.Errorf("Ingress %s sends to port %+v, which Service %s does not have", obj.Metadata.Name, backend.Port, backend.Name)
				}
			}
		}
		for _, annotation := range []string{"nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"} {
			seconds, err := strconv.Atoi(obj.Metadata.Annotations[annotation])
			if err != nil || time.Duration(seconds)*time.Second <= env.cfg.PingInterval {
				t.Errorf("Ingress %s: %s is %q, want seconds above PING_INTERVAL (%v)", obj.Metadata.Name, annotation, obj.Metadata.Annotations[annotation], env.cfg.PingInterval)
			}
		}
		if got := obj.Metadata.Annotations["nginx.ingress.kubernetes.io/proxy-buffering"]; got != "off" {
			t.Errorf("Ingress %s: proxy-buffering %q, want off for Server-Sent Events", obj.Metadata.Name, got)
		}
	}
	return probes
}

func TestDeployFilesNameTheDaemonsPortsPathsAndVariables(t *testing.T) {
	nginx := readDeployNginx(t)
	compose := checkCompose(t, nginx)
	k8s := checkK8s(t)
	requireProbesAnswer(t, probePaths{
		ready: slices.Compact(slices.Sorted(slices.Values(slices.Concat(compose.ready, k8s.ready)))),
		live:  slices.Compact(slices.Sorted(slices.Values(k8s.live))),
	})
}

// TestSystemdUnitsPassTheDaemonsPortToFanoutServe: deploy/systemd's socket
// listens on the port the daemon listens on by default, and its service
// runs `fanout serve` bound to that socket, stopping it with SIGTERM (the
// drain) within a timeout above SHUTDOWN_TIMEOUT.
func TestSystemdUnitsPassTheDaemonsPortToFanoutServe(t *testing.T) {
	unit := func(name string) map[string]string {
		t.Helper()
		b, err := os.ReadFile("deploy/systemd/" + name)
		if err != nil {
			t.Fatal(err)
		}
		keys := map[string]string{}
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
				keys[strings.TrimSpace(k)] = strings.TrimSpace(v)
			}
		}
		return keys
	}
	socket, service := unit("fanout.socket"), unit("fanout.service")
	def := daemonConfigOf(t, "the default environment", nil)
	if socket["ListenStream"] != strconv.Itoa(def.port) {
		t.Errorf("fanout.socket ListenStream=%s, want the daemon's default port %d", socket["ListenStream"], def.port)
	}
	if fields := strings.Fields(service["ExecStart"]); len(fields) != 2 || !strings.HasSuffix(fields[0], "/fanout") || fields[1] != "serve" {
		t.Errorf("fanout.service ExecStart=%q, want the fanout binary's serve command", service["ExecStart"])
	}
	if service["Requires"] != "fanout.socket" || service["KillSignal"] != "SIGTERM" {
		t.Errorf("fanout.service Requires=%q KillSignal=%q, want fanout.socket and SIGTERM", service["Requires"], service["KillSignal"])
	}
	stop, err := time.ParseDuration(service["TimeoutStopSec"] + "s")
	if err != nil || stop <= def.cfg.ShutdownTimeout {
		t.Errorf("fanout.service TimeoutStopSec=%q, want more than SHUTDOWN_TIMEOUT (%v)", service["TimeoutStopSec"], def.cfg.ShutdownTimeout)
	}
}
