//! deploy/k8s, checked offline: every manifest against the Kubernetes schemas
//! (kubernetes-validate, pinned in tests/k8s/requirements.txt) and the Prometheus Operator
//! CRDs vendored in tests/k8s/crds, through tests/k8s/validate.py in the venv that
//! `cargo xtask test` installs (`cargo xtask k8s-validator` alone); then against this
//! build's `stsync-proxy`: the flags the containers pass, the configs the ConfigMaps hold
//! (with the env vars the containers get), the ports the Services, probes and PodMonitor
//! use, the probe and metrics paths on a running relay, and the image name the README and
//! the Dockerfile build. No network: the relays run on loopback.

use serde_json::{Map, Value};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_stsync-proxy");
/// The oldest and newest Kubernetes the manifests are validated against.
const K8S_VERSIONS: [&str; 2] = ["1.30", "1.37"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn k8s_dir() -> PathBuf {
    root().join("deploy/k8s")
}

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s")
}

/// The validator venv's python: `STSYNC_K8S_PYTHON` (set by `cargo xtask test`), else the
/// venv `cargo xtask k8s-validator` makes in this build's target directory.
fn python() -> PathBuf {
    let python = std::env::var_os("STSYNC_K8S_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // BIN is <target>/<profile>/stsync-proxy.
            Path::new(BIN)
                .parent()
                .and_then(Path::parent)
                .expect("the target directory")
                .join("k8s-venv/bin/python")
        });
    assert!(
        python.is_file(),
        "no Kubernetes manifest validator at {}: install it with `cargo xtask k8s-validator` \
         (`cargo xtask test` does it first)",
        python.display()
    );
    python
}

/// Every YAML file in deploy/k8s.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .expect("deploy/k8s")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

/// validate.py over `files`: file name → its documents, or the validator's errors.
fn validate(files: &[PathBuf]) -> Result<Map<String, Value>, String> {
    let mut cmd = Command::new(python());
    cmd.arg(assets().join("validate.py"));
    for v in K8S_VERSIONS {
        cmd.args(["--kubernetes-version", v]);
    }
    let out = cmd
        .arg("--crds")
        .arg(assets().join("crds"))
        .args(files)
        .output()
        .expect("running validate.py");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    match serde_json::from_slice(&out.stdout).expect("validate.py prints JSON") {
        Value::Object(m) => Ok(m),
        other => panic!("validate.py printed {other}"),
    }
}

/// deploy/k8s, validated (once for all the tests here).
fn manifests() -> &'static Map<String, Value> {
    static M: OnceLock<Map<String, Value>> = OnceLock::new();
    M.get_or_init(|| {
        validate(&manifest_files()).unwrap_or_else(|e| panic!("deploy/k8s does not validate:\n{e}"))
    })
}

fn all_docs() -> impl Iterator<Item = &'static Value> {
    manifests()
        .values()
        .flat_map(|docs| docs.as_array().expect("a list of documents"))
}

fn docs_of(kind: &str) -> Vec<&'static Value> {
    all_docs().filter(|d| d["kind"] == kind).collect()
}

fn named(kind: &str, name: &str) -> &'static Value {
    docs_of(kind)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn arr(v: &Value) -> &Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}"))
}

/// The workload running one role of the tree: the origin (a Deployment) or the edges (a
/// DaemonSet).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Origin,
    Edge,
}

impl Role {
    fn workload(self) -> &'static Value {
        match self {
            Role::Origin => named("Deployment", "stsync-origin"),
            Role::Edge => named("DaemonSet", "stsync-edge"),
        }
    }

    fn pod(self) -> &'static Value {
        &self.workload()["spec"]["template"]
    }

    fn container(self) -> &'static Value {
        let containers = arr(&self.pod()["spec"]["containers"]);
        assert_eq!(containers.len(), 1, "{self:?}: one container");
        &containers[0]
    }

    fn args(self) -> Vec<String> {
        arr(&self.container()["args"])
            .iter()
            .map(|a| str_of(a).to_string())
            .collect()
    }

    /// The value of `--flag` in the container's args.
    fn flag(self, flag: &str) -> Option<String> {
        let args = self.args();
        let i = args.iter().position(|a| a == flag)?;
        Some(args.get(i + 1).expect("a flag's value").clone())
    }

    /// config.json as the container sees it: the ConfigMap key mounted at `--config`.
    fn config_text(self) -> String {
        let path = self.flag("--config").expect("--config in args");
        let c = self.container();
        let mount = arr(&c["volumeMounts"])
            .iter()
            .find(|m| path.starts_with(&format!("{}/", str_of(&m["mountPath"]))))
            .unwrap_or_else(|| panic!("{self:?}: nothing mounted at {path}"));
        let key = &path[str_of(&mount["mountPath"]).len() + 1..];
        let volume = arr(&self.pod()["spec"]["volumes"])
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mount's volume");
        assert!(volume["configMap"]["items"].is_null(), "keys mounted as-is");
        let cm = named("ConfigMap", str_of(&volume["configMap"]["name"]));
        assert_eq!(
            cm["metadata"]["namespace"],
            self.workload()["metadata"]["namespace"]
        );
        str_of(&cm["data"][key]).to_string()
    }

    fn config(self) -> Value {
        serde_json::from_str(&self.config_text())
            .unwrap_or_else(|e| panic!("{self:?}: config.json is not JSON: {e}"))
    }

    /// The container's environment: plain values as given, each Secret reference a
    /// random value such as `openssl rand -hex 32` makes.
    fn env(self) -> Vec<(String, String)> {
        arr(&self.container()["env"])
            .iter()
            .map(|e| {
                let value = if e["valueFrom"]["secretKeyRef"].is_object() {
                    format!(
                        "{:032x}{:032x}",
                        rand::random::<u128>(),
                        rand::random::<u128>()
                    )
                } else {
                    str_of(&e["value"]).to_string()
                };
                (str_of(&e["name"]).to_string(), value)
            })
            .collect()
    }

    /// `stsync-proxy <args with --config at config_path> check` in `env` only.
    fn check(self, config_path: &Path, env: &[(String, String)]) -> std::process::Output {
        Command::new(BIN)
            .args(with_config(&self.args(), config_path))
            .arg("check")
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("running stsync-proxy check")
    }

    /// The container port named `name`: (port, protocol).
    fn port(self, name: &str) -> (u16, String) {
        let p = arr(&self.container()["ports"])
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{self:?}: no container port {name}"));
        (
            p["containerPort"].as_u64().unwrap() as u16,
            p["protocol"].as_str().unwrap_or("TCP").to_string(),
        )
    }

    /// A probe's or Service's port (a number or a container port's name) as a number.
    fn resolve(self, port: &Value) -> u16 {
        match port {
            Value::String(name) => self.port(name).0,
            n => n.as_u64().expect("a port") as u16,
        }
    }
}

/// `args` with `--config`'s value replaced by `path`.
fn with_config(args: &[String], path: &Path) -> Vec<String> {
    let mut args = args.to_vec();
    let i = args.iter().position(|a| a == "--config").unwrap();
    args[i + 1] = path.display().to_string();
    args
}

fn listen_port(config: &Value, field: &str) -> u16 {
    str_of(&config[field])
        .parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{field}: {e}"))
        .port()
}

const ROLES: [Role; 2] = [Role::Origin, Role::Edge];

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let m = manifests();
    for f in manifest_files() {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(m.contains_key(name), "{name} not validated");
    }
    for (kind, n) in [
        ("Namespace", 1),
        ("ConfigMap", 2),
        ("Deployment", 1),
        ("DaemonSet", 1),
        ("Service", 2),
        ("Secret", 1),
        ("PodMonitor", 1),
        ("Kustomization", 1),
    ] {
        assert_eq!(docs_of(kind).len(), n, "{kind}");
    }
}

/// The validator is not vacuous: a typo, a wrong type and an unknown kind each fail.
#[test]
fn the_validator_refuses_broken_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let read = |f: &str| std::fs::read_to_string(k8s_dir().join(f)).unwrap();
    for (file, from, to, expect) in [
        ("origin.yaml", "protocol: UDP", "protocl: UDP", "protocl"),
        (
            "edge.yaml",
            "containerPort: 9999",
            "containerPort: \"9999\"",
            "is not of type 'integer'",
        ),
        (
            "edge.yaml",
            "hostNetwork: true",
            "hostNetwork: yes-please",
            "hostNetwork",
        ),
        (
            "monitoring.yaml",
            "podMetricsEndpoints:",
            "podMetricEndpoints:",
            "podMetricEndpoints",
        ),
        (
            "monitoring.yaml",
            "interval: 15s",
            "interval: 15",
            "interval",
        ),
        (
            "namespace.yaml",
            "kind: Namespace",
            "kind: Namespcae",
            "Namespcae",
        ),
    ] {
        let text = read(file);
        assert!(text.contains(from), "{file} has no {from:?}");
        let bad = dir.path().join(file);
        std::fs::write(&bad, text.replacen(from, to, 1)).unwrap();
        match validate(&[bad]) {
            Ok(_) => panic!("{file} with {to:?} validated"),
            Err(e) => assert!(e.contains(expect), "{file} with {to:?}: {e}"),
        }
    }
}

#[test]
fn kustomization_lists_every_manifest_but_the_secret_and_the_monitor() {
    let k = &docs_of("Kustomization")[0];
    let listed: Vec<&str> = arr(&k["resources"]).iter().map(str_of).collect();
    let mut expected: Vec<String> = manifest_files()
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap().to_string())
        .filter(|f| {
            ![
                "kustomization.yaml",
                "secret.example.yaml",
                "monitoring.yaml",
            ]
            .contains(&f.as_str())
        })
        .collect();
    expected.sort();
    let mut got: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    got.sort();
    assert_eq!(got, expected);
    // Everything namespaced is in the namespace namespace.yaml makes.
    let ns = str_of(&docs_of("Namespace")[0]["metadata"]["name"]);
    for d in all_docs().filter(|d| !["Namespace", "Kustomization"].contains(&str_of(&d["kind"]))) {
        assert_eq!(d["metadata"]["namespace"], ns, "{}", d["metadata"]["name"]);
    }
}

/// What the Dockerfile installs: (binary, eBPF object) paths in the image.
fn image_paths() -> (String, String) {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let dest = |src_suffix: &str| {
        dockerfile
            .lines()
            .filter_map(|l| l.strip_prefix("COPY --from=build "))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.len() == 2 && w[0].ends_with(src_suffix))
            .unwrap_or_else(|| panic!("no COPY of *{src_suffix} in the Dockerfile"))[1]
            .to_string()
    };
    (dest("/release/stsync-proxy"), dest("/release/stsync-ebpf"))
}

#[test]
fn containers_run_the_images_binary_and_object() {
    let (binary, object) = image_paths();
    for role in ROLES {
        assert_eq!(
            role.container()["command"],
            serde_json::json!([binary]),
            "{role:?}"
        );
    }
    assert_eq!(Role::Edge.flag("--ebpf-object"), Some(object));
    assert_eq!(Role::Edge.flag("--datapath").as_deref(), Some("auto"));
    assert_eq!(
        Role::Origin.flag("--datapath").as_deref(),
        Some("userspace")
    );
}

/// The image every manifest runs is the one the README and the Dockerfile build, tagged
/// with this crate's major.minor version.
#[test]
fn images_are_the_one_the_instructions_build() {
    let built = |file: &str| -> Vec<String> {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        text.split("docker build -t ")
            .skip(1)
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    let dockerfile = built("Dockerfile");
    let readme = built("README.md");
    assert!(
        !dockerfile.is_empty() && !readme.is_empty(),
        "docker build -t"
    );
    let image = &dockerfile[0];
    for i in dockerfile.iter().chain(&readme) {
        assert_eq!(i, image, "every docker build tags the same image");
    }
    let mut version = env!("CARGO_PKG_VERSION").split('.');
    let tag = format!("{}.{}", version.next().unwrap(), version.next().unwrap());
    assert!(
        image.ends_with(&format!(":{tag}")),
        "{image} is not tagged {tag}"
    );
    for role in ROLES {
        assert_eq!(str_of(&role.container()["image"]), image, "{role:?}");
    }
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("docker push {image}")),
        "the README pushes {image}"
    );
}

/// Every `${NAME}` in a ConfigMap's config.json is one of the container's env vars, and
/// every secret (tokens, key_secret, passphrases) is such a placeholder filled from the
/// Secret whose shape secret.example.yaml shows.
#[test]
fn secrets_come_from_the_secret_through_env_placeholders() {
    let secret = named("Secret", "stsync-secrets");
    let keys = secret["stringData"].as_object().expect("stringData");
    for role in ROLES {
        let text = role.config_text();
        let env: Vec<&Value> = arr(&role.container()["env"]).iter().collect();
        for e in &env {
            if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                assert_eq!(r["name"], "stsync-secrets", "{role:?}");
                assert!(keys.contains_key(str_of(&r["key"])), "{role:?}: {r:?}");
            }
        }
        let from_secret = |name: &str| {
            env.iter()
                .any(|e| e["name"] == name && e["valueFrom"]["secretKeyRef"].is_object())
        };
        let mut placeholders = 0;
        for part in text.split("\"${").skip(1) {
            let name = part.split("}\"").next().unwrap();
            assert!(
                from_secret(name),
                "{role:?}: ${{{name}}} is not from the Secret"
            );
            placeholders += 1;
        }
        // Every secret-bearing field, wherever it is, is a placeholder.
        fn walk(v: &Value, path: &str, role: Role) {
            match v {
                Value::Object(o) => {
                    for (k, v) in o {
                        if [
                            "token",
                            "key_secret",
                            "publish_passphrase",
                            "view_passphrase",
                        ]
                        .contains(&k.as_str())
                        {
                            let s = str_of(v);
                            assert!(
                                s.starts_with("${") && s.ends_with('}'),
                                "{role:?}: {path}.{k} is written in the ConfigMap"
                            );
                        }
                        walk(v, &format!("{path}.{k}"), role);
                    }
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, path, role)),
                _ => {}
            }
        }
        walk(&role.config(), "", role);
        assert!(placeholders > 0, "{role:?}");
    }
}

/// The ConfigMap's config.json with the env the container gets passes `stsync-proxy
/// check`, with the container's own flags.
fn config_passes_check(role: Role) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, role.config_text()).unwrap();
    let out = role.check(&path, &role.env());
    assert!(
        out.status.success(),
        "{role:?}: stsync-proxy {} check: {}",
        role.args().join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(": ok: "), "{summary}");
    // Without the Secret's values the relay refuses to start, naming the variable.
    let out = role.check(&path, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("environment variable STSYNC_"),
        "{role:?}: {err}"
    );
}

#[test]
fn origin_config_and_flags_pass_check() {
    config_passes_check(Role::Origin);
}

#[test]
fn edge_config_and_flags_pass_check() {
    config_passes_check(Role::Edge);
}

/// secret.example.yaml's placeholders are refused as tokens: applied by mistake, it
/// cannot run.
#[test]
fn the_example_secret_cannot_run() {
    let secret = named("Secret", "stsync-secrets");
    let role = Role::Origin;
    let env: Vec<(String, String)> = arr(&role.container()["env"])
        .iter()
        .map(|e| {
            let value = match e["valueFrom"]["secretKeyRef"]["key"].as_str() {
                Some(key) => str_of(&secret["stringData"][key]).to_string(),
                None => str_of(&e["value"]).to_string(),
            };
            (str_of(&e["name"]).to_string(), value)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, role.config_text()).unwrap();
    let out = role.check(&path, &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("placeholder"),
        "{err}"
    );
    for v in secret["stringData"].as_object().unwrap().values() {
        assert!(str_of(v).starts_with("replace-with-"), "{v}");
    }
}

/// Container ports, hostPorts, probes, Services and the PodMonitor all use the ports the
/// configs listen on; selectors pick the pods they mean.
#[test]
fn ports_match_the_configs() {
    for role in ROLES {
        let config = role.config();
        let srt = listen_port(&config, "srt_listen");
        let api = listen_port(&config, "http_listen");
        assert_eq!(role.port("srt"), (srt, "UDP".into()), "{role:?}");
        assert_eq!(role.port("api"), (api, "TCP".into()), "{role:?}");
        for probe in ["livenessProbe", "readinessProbe"] {
            let get = &role.container()[probe]["httpGet"];
            assert_eq!(role.resolve(&get["port"]), api, "{role:?} {probe}");
            assert!(get["scheme"].is_null() || get["scheme"] == "HTTP");
        }
        // Selectors match the pod template's labels.
        let labels = role.pod()["metadata"]["labels"].as_object().unwrap();
        for (k, v) in role.workload()["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
        {
            assert_eq!(labels.get(k), Some(v), "{role:?} selector {k}");
        }
    }
    // The edges bind the node's ports.
    let edge = Role::Edge;
    assert_eq!(edge.pod()["spec"]["hostNetwork"], true);
    assert_eq!(edge.pod()["spec"]["dnsPolicy"], "ClusterFirstWithHostNet");
    for p in arr(&edge.container()["ports"]) {
        assert_eq!(p["hostPort"], p["containerPort"]);
    }
    // Services select the origin only and reach its ports.
    let matches = |selector: &Value, role: Role| {
        let labels = &role.pod()["metadata"]["labels"];
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &labels[k] == v)
    };
    for svc in docs_of("Service") {
        let sel = &svc["spec"]["selector"];
        assert!(matches(sel, Role::Origin), "{}", svc["metadata"]["name"]);
        assert!(!matches(sel, Role::Edge), "{}", svc["metadata"]["name"]);
        for p in arr(&svc["spec"]["ports"]) {
            let name = str_of(&p["name"]);
            let (port, protocol) = Role::Origin.port(name);
            assert_eq!(Role::Origin.resolve(&p["targetPort"]), port, "{name}");
            assert_eq!(str_of(&p["protocol"]), protocol, "{name}");
        }
    }
    // The edges pull from the origin's Service: its DNS name and ports.
    let svc = named("Service", "stsync-origin");
    let host = format!(
        "{}.{}.svc.cluster.local",
        str_of(&svc["metadata"]["name"]),
        str_of(&svc["metadata"]["namespace"])
    );
    let svc_port = |name: &str| {
        arr(&svc["spec"]["ports"])
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["port"]
            .as_u64()
            .unwrap()
    };
    for s in arr(&Role::Edge.config()["streams"]) {
        let ups = arr(&s["upstream"]);
        assert!(!ups.is_empty());
        for u in ups {
            assert_eq!(str_of(&u["srt"]), format!("{host}:{}", svc_port("srt")));
            assert_eq!(
                str_of(&u["api"]),
                format!("http://{host}:{}", svc_port("api"))
            );
        }
    }
    // The PodMonitor scrapes both roles on their API port.
    let pm = &docs_of("PodMonitor")[0];
    for role in ROLES {
        assert!(
            matches(&pm["spec"]["selector"]["matchLabels"], role),
            "{role:?}"
        );
        for ep in arr(&pm["spec"]["podMetricsEndpoints"]) {
            let api = listen_port(&role.config(), "http_listen");
            assert_eq!(role.port(str_of(&ep["port"])).0, api);
        }
    }
}

/// The edges hold exactly the capabilities the kernel path needs, and nothing privileged.
#[test]
fn edges_have_only_the_kernel_paths_capabilities() {
    let sc = &Role::Edge.container()["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["BPF", "NET_ADMIN", "PERFMON"])
    );
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert!(Role::Edge.pod()["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["hostPath"].is_null()));
    let sc = &Role::Origin.container()["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc["capabilities"]["add"].is_null());
    assert_eq!(
        Role::Origin.pod()["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
}

/// A free TCP port and a free UDP port on loopback.
fn free_ports() -> (u16, u16) {
    let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    (
        udp.local_addr().unwrap().port(),
        tcp.local_addr().unwrap().port(),
    )
}

/// Kills the relay this test started when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(url: &str) -> Result<(u16, String), String> {
    match ureq::get(url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => {
            let status = r.status();
            let mut body = String::new();
            r.into_reader()
                .take(1 << 20)
                .read_to_string(&mut body)
                .map_err(|e| e.to_string())?;
            Ok((status, body))
        }
        Err(ureq::Error::Status(code, _)) => Ok((code, String::new())),
        Err(e) => Err(e.to_string()),
    }
}

/// The role's relay, started as its container starts it (its flags, its config, its
/// env) but on loopback ports and with the userspace datapath, answers its liveness and
/// readiness probes and the PodMonitor's metrics path with 200.
fn probes_answer(role: Role) {
    let dir = tempfile::tempdir().unwrap();
    let (srt, api) = free_ports();
    let mut config = role.config();
    config["srt_listen"] = format!("127.0.0.1:{srt}").into();
    config["http_listen"] = format!("127.0.0.1:{api}").into();
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let mut args = with_config(&role.args(), &path);
    let i = args.iter().position(|a| a == "--datapath").unwrap();
    args[i + 1] = "userspace".into();
    let log = dir.path().join("relay.log");
    let child = Command::new(BIN)
        .args(&args)
        .args(["--workers", "1"])
        .env_clear()
        .envs(role.env())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting stsync-proxy");
    let mut relay = Running(child);
    let base = format!("http://127.0.0.1:{api}");
    let probe = |p: &str| {
        let get = &role.container()[p]["httpGet"];
        format!("{base}{}", str_of(&get["path"]))
    };
    let liveness = probe("livenessProbe");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = relay.0.try_wait().unwrap() {
            panic!(
                "{role:?}: the relay exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if get(&liveness).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{role:?}: no answer at {liveness}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pm = &docs_of("PodMonitor")[0];
    let metrics = format!(
        "{base}{}",
        str_of(&arr(&pm["spec"]["podMetricsEndpoints"])[0]["path"])
    );
    for url in [liveness, probe("readinessProbe"), metrics.clone()] {
        let (status, body) = get(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(status, 200, "{role:?}: {url}: {body}");
        if url == metrics {
            assert!(body.contains("stsync_datapath"), "{body}");
        }
    }
}

#[test]
fn origin_probes_answer_on_a_running_relay() {
    probes_answer(Role::Origin);
}

#[test]
fn edge_probes_answer_on_a_running_relay() {
    probes_answer(Role::Edge);
}

/// The README's walk-through uses the names, labels, Secret keys and ports the manifests
/// have.
#[test]
fn readme_walkthrough_matches_the_manifests() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Kubernetes\n")
        .nth(1)
        .expect("a Kubernetes section")
        .split("\n## ")
        .next()
        .unwrap();
    let has = |s: &str| assert!(section.contains(s), "README, Kubernetes, lacks {s:?}");
    for (role, node) in [
        (Role::Origin, "node1"),
        (Role::Edge, "node2"),
        (Role::Edge, "node3"),
    ] {
        for (k, v) in role.pod()["spec"]["nodeSelector"].as_object().unwrap() {
            has(&format!("kubectl label node {node} {k}={}", str_of(v)));
        }
    }
    let secret = named("Secret", "stsync-secrets");
    has("create secret generic stsync-secrets");
    for key in secret["stringData"].as_object().unwrap().keys() {
        has(&format!("--from-literal={key}="));
        // The tokens are read back to mint keys.
        if key.ends_with("-token") {
            has(&format!("{{.data.{key}}}"));
        }
    }
    let ns = str_of(&docs_of("Namespace")[0]["metadata"]["name"]);
    has(&format!("kubectl -n {ns} "));
    has(&format!(
        "ds/{}",
        str_of(&Role::Edge.workload()["metadata"]["name"])
    ));
    has(&format!(
        "deploy/{}",
        str_of(&Role::Origin.workload()["metadata"]["name"])
    ));
    let publish = named("Service", "stsync-origin-publish");
    let node_port = arr(&publish["spec"]["ports"])[0]["nodePort"]
        .as_u64()
        .unwrap();
    has(&format!("srt://node1:{node_port}?"));
    let api = Role::Origin.resolve(&Value::from("api"));
    has(&format!("port-forward svc/stsync-origin {api}:{api}"));
    let edge = Role::Edge.config();
    has(&format!(
        "http://node2:{}/v1/streams/1/sessions",
        listen_port(&edge, "http_listen")
    ));
    has(&format!(
        "srt://node2:{}?",
        listen_port(&edge, "srt_listen")
    ));
    has(&format!(
        "--config {} ",
        Role::Edge.flag("--config").unwrap()
    ));
    has(&format!(
        "-l app.kubernetes.io/component={}",
        str_of(&Role::Edge.pod()["metadata"]["labels"]["app.kubernetes.io/component"])
    ));
}
