//! The packaging, checked offline: the Kubernetes base (`deploy/kubernetes/`), the Dockerfile,
//! the systemd unit and the launchd plist. Nothing here needs a network, a cluster or an
//! installed tool; `kubectl` and `systemd-analyze` add a check each when present, and say so
//! when they are not.
//!
//! - Every manifest is parsed into its typed Kubernetes object (`k8s-openapi`, Kubernetes 1.33)
//!   and serialized back: a field the type does not know (a typo, a wrong indentation) is lost
//!   on the way and fails the test with its path. k8s-openapi alone ignores unknown fields.
//! - Every command line (containers, Dockerfile, systemd, launchd) is run against the built
//!   binary with `--help` appended: clap answers help only when every subcommand and option
//!   before it exists, and fails on the first one that does not.
//! - The configs in the ConfigMap go through `bindgate validate`.
//! - The image is built where a container builder (buildah or podman) is installed and the base
//!   images can be pulled; otherwise that test says why it did not build.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PodSpec, PodTemplateSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const BINDGATE: &str = env!("CARGO_BIN_EXE_bindgate");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn k8s_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Typed manifests

/// One Kubernetes object of the base, typed.
#[allow(
    clippy::large_enum_variant,
    reason = "ten objects, read once per test: boxing would only add noise"
)]
enum Object {
    ConfigMap(ConfigMap),
    CronJob(CronJob),
    Deployment(Deployment),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    PodDisruptionBudget(PodDisruptionBudget),
    Role(Role),
    RoleBinding(RoleBinding),
    Secret(Secret),
    Service(Service),
    ServiceAccount(ServiceAccount),
}

/// Deserializes `value` as `T` and serializes it back: any part of `value` that did not
/// survive (an unknown or misspelled field, at any depth) is an error naming its path.
fn strict<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut lost = Vec::new();
    not_kept(value, &back, "", &mut lost);
    if lost.is_empty() {
        Ok(typed)
    } else {
        Err(lost.join("; "))
    }
}

/// Paths of `original` that `typed` does not hold with the same value. Fields the type adds
/// (none today) are not errors: only what the file says and the type dropped or changed.
fn not_kept(original: &Value, typed: &Value, path: &str, lost: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => {
            for (k, v) in o {
                let p = format!("{path}.{k}");
                match t.get(k) {
                    Some(tv) => not_kept(v, tv, &p, lost),
                    None => lost.push(format!("`{p}`: unknown field (not in the Kubernetes type)")),
                }
            }
        }
        (Value::Array(o), Value::Array(t)) if o.len() == t.len() => {
            for (i, (ov, tv)) in o.iter().zip(t).enumerate() {
                not_kept(ov, tv, &format!("{path}[{i}]"), lost);
            }
        }
        (o, t) if o == t => {}
        (o, t) => lost.push(format!("`{path}`: {o} was read as {t}")),
    }
}

fn typed(value: &Value) -> Result<Object, String> {
    let kind = value["kind"].as_str().unwrap_or_default();
    Ok(match kind {
        "ConfigMap" => Object::ConfigMap(strict(value)?),
        "CronJob" => Object::CronJob(strict(value)?),
        "Deployment" => Object::Deployment(strict(value)?),
        "HorizontalPodAutoscaler" => Object::HorizontalPodAutoscaler(strict(value)?),
        "PodDisruptionBudget" => Object::PodDisruptionBudget(strict(value)?),
        "Role" => Object::Role(strict(value)?),
        "RoleBinding" => Object::RoleBinding(strict(value)?),
        "Secret" => Object::Secret(strict(value)?),
        "Service" => Object::Service(strict(value)?),
        "ServiceAccount" => Object::ServiceAccount(strict(value)?),
        other => return Err(format!("kind `{other}` is not one this test knows")),
    })
}

/// Every YAML document of a text, as JSON values.
fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(doc).map_err(|e| e.to_string())?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The manifest files of the base: every `*.yaml` / `*.yml` but the kustomization.
fn manifest_files() -> BTreeSet<String> {
    std::fs::read_dir(k8s_dir())
        .expect("deploy/kubernetes")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .filter(|n| n != "kustomization.yaml")
        .collect()
}

/// Every object of the base, typed; panics naming the file and the field when one fails.
struct Base {
    objects: Vec<Object>,
}

impl Base {
    fn load() -> Base {
        let mut objects = Vec::new();
        let mut errors = Vec::new();
        for file in manifest_files() {
            let docs = match documents(&read(&k8s_dir().join(&file))) {
                Ok(d) => d,
                Err(e) => {
                    errors.push(format!("{file}: {e}"));
                    continue;
                }
            };
            for (i, doc) in docs.iter().enumerate() {
                match typed(doc) {
                    Ok(o) => objects.push(o),
                    Err(e) => errors.push(format!("{file} (document {}): {e}", i + 1)),
                }
            }
        }
        assert!(errors.is_empty(), "manifests:\n  {}", errors.join("\n  "));
        Base { objects }
    }

    fn deployment(&self) -> &Deployment {
        self.one(|o| match o {
            Object::Deployment(d) => Some(d),
            _ => None,
        })
    }

    fn cron_job(&self) -> &CronJob {
        self.one(|o| match o {
            Object::CronJob(c) => Some(c),
            _ => None,
        })
    }

    fn config_map(&self, name: &str) -> &ConfigMap {
        self.one(|o| match o {
            Object::ConfigMap(c) if c.metadata.name.as_deref() == Some(name) => Some(c),
            _ => None,
        })
    }

    fn secret(&self) -> &Secret {
        self.one(|o| match o {
            Object::Secret(s) => Some(s),
            _ => None,
        })
    }

    fn service(&self) -> &Service {
        self.one(|o| match o {
            Object::Service(s) => Some(s),
            _ => None,
        })
    }

    fn role(&self) -> &Role {
        self.one(|o| match o {
            Object::Role(r) => Some(r),
            _ => None,
        })
    }

    fn role_binding(&self) -> &RoleBinding {
        self.one(|o| match o {
            Object::RoleBinding(r) => Some(r),
            _ => None,
        })
    }

    fn service_account(&self) -> &ServiceAccount {
        self.one(|o| match o {
            Object::ServiceAccount(s) => Some(s),
            _ => None,
        })
    }

    fn hpa(&self) -> &HorizontalPodAutoscaler {
        self.one(|o| match o {
            Object::HorizontalPodAutoscaler(h) => Some(h),
            _ => None,
        })
    }

    fn pdb(&self) -> &PodDisruptionBudget {
        self.one(|o| match o {
            Object::PodDisruptionBudget(p) => Some(p),
            _ => None,
        })
    }

    /// The one object `pick` selects; panics when there are none or several.
    fn one<'a, T>(&'a self, pick: impl Fn(&'a Object) -> Option<&'a T>) -> &'a T {
        let found: Vec<&T> = self.objects.iter().filter_map(pick).collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one such object in the base"
        );
        found[0]
    }

    fn gateway_pod(&self) -> &PodTemplateSpec {
        &self
            .deployment()
            .spec
            .as_ref()
            .expect("Deployment spec")
            .template
    }

    fn issuer_pod(&self) -> &PodTemplateSpec {
        &self
            .cron_job()
            .spec
            .as_ref()
            .expect("CronJob spec")
            .job_template
            .spec
            .as_ref()
            .expect("jobTemplate spec")
            .template
    }

    /// Every pod template: (what it is, the template).
    fn pods(&self) -> Vec<(&'static str, &PodTemplateSpec)> {
        vec![
            ("Deployment bindgate", self.gateway_pod()),
            ("CronJob bindgate-identity-issue", self.issuer_pod()),
        ]
    }
}

fn spec(pod: &PodTemplateSpec) -> &PodSpec {
    pod.spec.as_ref().expect("pod spec")
}

fn all_containers(pod: &PodSpec) -> Vec<&Container> {
    pod.init_containers
        .iter()
        .flatten()
        .chain(pod.containers.iter())
        .collect()
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    all_containers(pod)
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container `{name}`"))
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// ---------------------------------------------------------------------------------------------
// The bindgate command line

/// The image's `ENTRYPOINT` and `CMD`, from the Dockerfile's last stage (exec form only: the
/// shell form would need a shell the image does not have).
fn dockerfile_entrypoint_and_cmd() -> (Vec<String>, Vec<String>) {
    let text = read(&repo().join("Dockerfile"));
    let last_stage = text.rsplit_once("\nFROM ").expect("a FROM line").1;
    let exec_form = |instruction: &str| -> Vec<String> {
        let line = last_stage
            .lines()
            .find_map(|l| l.strip_prefix(instruction))
            .unwrap_or_else(|| panic!("Dockerfile: no {instruction}in the last stage"));
        serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("Dockerfile: {instruction}is not the exec form: {e}"))
    };
    (exec_form("ENTRYPOINT "), exec_form("CMD "))
}

/// The image this base runs bindgate from, by the name kustomize's `images:` rewrites.
const IMAGE: &str = "bindgate";

fn is_bindgate_image(image: Option<&str>) -> bool {
    let image = image.unwrap_or_default();
    image == IMAGE || image.starts_with(&format!("{IMAGE}:"))
}

/// The argv a container runs: its `command` or the image's ENTRYPOINT, then its `args` or the
/// image's CMD (Kubernetes' rules).
fn container_argv(c: &Container) -> Vec<String> {
    let (entrypoint, cmd) = dockerfile_entrypoint_and_cmd();
    let mut argv = c.command.clone().unwrap_or(entrypoint);
    argv.extend(
        c.args
            .clone()
            .unwrap_or(if c.command.is_some() { Vec::new() } else { cmd }),
    );
    argv
}

/// Asks the built binary for help after `args`: Ok when clap accepts every subcommand and
/// option in `args`, Err with clap's message when it does not. Required options that are
/// missing go unseen (help wins over them): `option_value` checks those.
fn cli_accepts(args: &[String]) -> Result<(), String> {
    let out = Command::new(BINDGATE)
        .args(args)
        .arg("--help")
        .output()
        .expect("run bindgate");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`bindgate {} --help` exited {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The argv minus the program: asserts the program is bindgate.
fn bindgate_args(what: &str, argv: &[String]) -> Vec<String> {
    let program = argv.first().map(String::as_str).unwrap_or_default();
    assert!(
        program == "bindgate" || program.ends_with("/bindgate"),
        "{what}: runs `{program}`, not bindgate"
    );
    argv[1..].to_vec()
}

/// The value after `-c` / `--config` (or `--config=`).
fn option_value(args: &[String], short: &str, long: &str) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == short || a == long {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&format!("{long}=")) {
            return Some(v.to_owned());
        }
    }
    None
}

#[test]
fn the_help_probe_tells_valid_command_lines_from_invalid_ones() {
    // The method every CLI check below relies on, shown on subcommands that exist today.
    let ok = |s: &str| cli_accepts(&s.split(' ').map(String::from).collect::<Vec<_>>());
    for good in [
        "run -c /etc/bindgate/config.yaml",
        "validate -c /etc/bindgate/config.yaml",
        "status -c /etc/bindgate/config.yaml",
        "status --admin 127.0.0.1:9901 --json",
        "--log debug run --config /etc/bindgate/config.yaml",
    ] {
        assert_eq!(ok(good), Ok(()), "`{good}` should be accepted");
    }
    for bad in [
        "rn -c /etc/bindgate/config.yaml",
        "run --conifg /etc/bindgate/config.yaml",
        "run -c /etc/bindgate/config.yaml --out /tmp",
        "status --admin not-an-address",
        "identity-issue -c /etc/bindgate/config.yaml",
    ] {
        assert!(ok(bad).is_err(), "`{bad}` should be refused");
    }
}

#[test]
fn gateway_container_arguments_are_accepted_by_the_cli() {
    let base = Base::load();
    let pod = spec(base.gateway_pod());
    let mut checked = 0;
    for c in all_containers(pod) {
        assert!(
            is_bindgate_image(c.image.as_deref()),
            "Deployment container `{}` runs image {:?}, not `{IMAGE}`",
            c.name,
            c.image
        );
        let args = bindgate_args(&c.name, &container_argv(c));
        assert_eq!(args.first().map(String::as_str), Some("run"));
        assert_eq!(
            option_value(&args, "-c", "--config").as_deref(),
            Some("/etc/bindgate/config.yaml"),
            "the gateway runs the config the image documents"
        );
        cli_accepts(&args).unwrap();
        checked += 1;
    }
    assert_eq!(checked, 1);
}

/// The identity job runs `bindgate identity issue -c FILE --out DIR` (DESIGN.md "Fleet
/// identity").
#[test]
fn identity_issue_container_arguments_are_accepted_by_the_cli() {
    let base = Base::load();
    let pod = spec(base.issuer_pod());
    let bindgate: Vec<&Container> = all_containers(pod)
        .into_iter()
        .filter(|c| is_bindgate_image(c.image.as_deref()))
        .collect();
    assert_eq!(
        bindgate.len(),
        1,
        "one bindgate container in the identity job"
    );
    let args = bindgate_args("identity job", &container_argv(bindgate[0]));
    assert_eq!(args[..2], ["identity", "issue"]);
    assert!(option_value(&args, "-c", "--config").is_some());
    assert!(option_value(&args, "--out", "--out").is_some());
    cli_accepts(&args).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The Kubernetes base

#[test]
fn every_manifest_parses_into_its_typed_kubernetes_object_with_no_unknown_field() {
    let base = Base::load();
    let mut kinds: Vec<&str> = base
        .objects
        .iter()
        .map(|o| match o {
            Object::ConfigMap(_) => "ConfigMap",
            Object::CronJob(_) => "CronJob",
            Object::Deployment(_) => "Deployment",
            Object::HorizontalPodAutoscaler(_) => "HorizontalPodAutoscaler",
            Object::PodDisruptionBudget(_) => "PodDisruptionBudget",
            Object::Role(_) => "Role",
            Object::RoleBinding(_) => "RoleBinding",
            Object::Secret(_) => "Secret",
            Object::Service(_) => "Service",
            Object::ServiceAccount(_) => "ServiceAccount",
        })
        .collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "CronJob",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount"
        ]
    );
}

#[test]
fn a_misspelled_or_misplaced_field_is_refused() {
    // What the check above catches that k8s-openapi alone lets through.
    let good = "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: x }\nspec:\n  selector: { matchLabels: { a: b } }\n  template:\n    metadata: { labels: { a: b } }\n    spec:\n      terminationGracePeriodSeconds: 45\n      containers: [ { name: c, image: i } ]\n";
    let parse = |text: &str| strict::<Deployment>(&documents(text).unwrap()[0]).map(|_| ());
    assert_eq!(parse(good), Ok(()));
    let typo = good.replace(
        "terminationGracePeriodSeconds",
        "terminationGracePeriodSecond",
    );
    let err = parse(&typo).unwrap_err();
    assert!(
        err.contains("spec.template.spec.terminationGracePeriodSecond"),
        "{err}"
    );
    // Right name, wrong level: a container field on the pod.
    let misplaced = good.replace(
        "terminationGracePeriodSeconds: 45",
        "readinessProbe: { httpGet: { path: /ready, port: 9901 } }",
    );
    assert!(parse(&misplaced).unwrap_err().contains("readinessProbe"));
    // And k8s-openapi really does ignore it on its own.
    assert!(serde_json::from_value::<Deployment>(documents(&typo).unwrap().remove(0)).is_ok());
}

#[test]
fn kustomization_lists_exactly_the_manifests_present() {
    let kustomization: Value =
        serde_yaml_ng::from_str(&read(&k8s_dir().join("kustomization.yaml"))).unwrap();
    assert_eq!(kustomization["kind"], "Kustomization");
    let listed: Vec<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect();
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "a resource is listed twice");
    assert_eq!(
        unique,
        manifest_files(),
        "resources vs files in deploy/kubernetes"
    );
    // The image kustomize rewrites is the one the pods name.
    assert_eq!(kustomization["images"][0]["name"], IMAGE);

    // With kubectl at hand, the base also builds (kustomize is built into kubectl).
    match Command::new("kubectl")
        .args(["kustomize"])
        .arg(k8s_dir())
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "kubectl kustomize: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let built = documents(&String::from_utf8_lossy(&out.stdout)).unwrap();
            let in_files: usize = manifest_files()
                .iter()
                .map(|f| documents(&read(&k8s_dir().join(f))).unwrap().len())
                .sum();
            assert_eq!(built.len(), in_files, "objects built by kustomize");
        }
        Err(e) => println!("skipped `kubectl kustomize`: kubectl cannot run here ({e})"),
    }
}

/// The bindgate config a pod runs: the `-c` path of its bindgate container, resolved through
/// its volume mounts to a ConfigMap key. Returns (ConfigMap key, text, the container).
fn pod_config<'a>(base: &'a Base, pod: &'a PodSpec) -> (String, String, &'a Container) {
    let c = all_containers(pod)
        .into_iter()
        .find(|c| is_bindgate_image(c.image.as_deref()))
        .expect("a bindgate container");
    let args = container_argv(c);
    let path = option_value(&args, "-c", "--config").expect("-c FILE");
    let (dir, file) = path.rsplit_once('/').expect("an absolute path");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == dir)
        .unwrap_or_else(|| panic!("container `{}`: nothing mounted at {dir}", c.name));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the mount's volume");
    let source = volume
        .config_map
        .as_ref()
        .unwrap_or_else(|| panic!("{dir} is not a ConfigMap volume"));
    let key = match &source.items {
        Some(items) => items
            .iter()
            .find(|i| i.path == file)
            .unwrap_or_else(|| panic!("ConfigMap volume `{}` has no item at {file}", volume.name))
            .key
            .clone(),
        None => file.to_owned(),
    };
    let text = base
        .config_map(&source.name)
        .data
        .as_ref()
        .and_then(|d| d.get(&key))
        .unwrap_or_else(|| panic!("ConfigMap `{}` has no key `{key}`", source.name))
        .clone();
    (key, text, c)
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).expect("config YAML")
}

fn port_of(address: &str) -> i32 {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("`{address}` has no port"))
}

fn container_port(c: &Container, port: &IntOrString) -> i32 {
    match port {
        IntOrString::Int(p) => *p,
        IntOrString::String(name) => {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("container `{}` has no port named `{name}`", c.name))
                .container_port
        }
    }
}

#[test]
fn probes_ask_live_and_ready_on_the_admin_port_of_the_config() {
    let base = Base::load();
    let pod = spec(base.gateway_pod());
    let (_, text, c) = pod_config(&base, pod);
    let config = yaml(&text);
    let admin = config["admin"]["address"]
        .as_str()
        .unwrap_or("127.0.0.1:9901");
    // The kubelet probes the pod IP: a loopback admin server would never answer it.
    let ip: std::net::IpAddr = admin.rsplit_once(':').unwrap().0.parse().unwrap();
    assert!(
        !ip.is_loopback(),
        "admin.address {admin} is loopback: the kubelet cannot reach it"
    );
    assert_eq!(config["admin"]["allow_non_loopback"], true);
    let admin_port = port_of(admin);

    let probe = |name: &str, probe: Option<&k8s_openapi::api::core::v1::Probe>| {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{name}: an httpGet probe"));
        assert_eq!(container_port(c, &get.port), admin_port, "{name} port");
        assert_eq!(get.scheme.as_deref().unwrap_or("HTTP"), "HTTP", "{name}");
        get.path.clone().unwrap_or_default()
    };
    assert_eq!(probe("livenessProbe", c.liveness_probe.as_ref()), "/live");
    assert_eq!(
        probe("readinessProbe", c.readiness_probe.as_ref()),
        "/ready"
    );
    if c.startup_probe.is_some() {
        assert_eq!(probe("startupProbe", c.startup_probe.as_ref()), "/live");
    }
}

#[test]
fn termination_grace_outlasts_the_pre_stop_and_the_longest_drain() {
    let base = Base::load();
    let pod = spec(base.gateway_pod());
    let (_, text, c) = pod_config(&base, pod);
    let config = yaml(&text);
    // Every listener drains for its drain_timeout (default 30s) after SIGTERM.
    let longest_drain = config["static_resources"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let d = l["drain_timeout"].as_str().unwrap_or("30s");
            bindgate::config::parse_duration(d).expect("a duration")
        })
        .max()
        .unwrap_or(std::time::Duration::from_secs(30))
        .max(std::time::Duration::from_secs(30)); // discovered listeners: the default
    let pre_stop = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .expect("a preStop hook");
    let sleep = pre_stop.sleep.as_ref().map_or(0, |s| s.seconds);
    assert!(
        pre_stop.exec.is_none(),
        "the image has no shell for an exec hook"
    );
    assert!(
        sleep > 0,
        "preStop sleeps while the pod leaves the endpoints"
    );
    let grace = pod
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace as u64 > sleep as u64 + longest_drain.as_secs(),
        "terminationGracePeriodSeconds {grace} <= preStop {sleep}s + drain {longest_drain:?}"
    );
}

#[test]
fn ports_of_the_pod_and_the_service_are_the_config_listeners() {
    let base = Base::load();
    let template = base.gateway_pod();
    let pod = spec(template);
    let (_, text, c) = pod_config(&base, pod);
    let config = yaml(&text);
    let admin_port = port_of(config["admin"]["address"].as_str().unwrap());
    let listener_ports: BTreeSet<i32> = config["static_resources"]["listeners"]
        .as_array()
        .expect("static listeners")
        .iter()
        .map(|l| {
            let address = l["address"].as_str().unwrap();
            assert!(
                !address.starts_with("127."),
                "listener {} on loopback is unreachable in a pod",
                l["name"]
            );
            port_of(address)
        })
        .collect();
    let declared: BTreeSet<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
    let mut expected = listener_ports.clone();
    expected.insert(admin_port);
    assert_eq!(
        declared, expected,
        "containerPorts: the listeners and admin"
    );

    let service = base.service();
    let svc = service.spec.as_ref().expect("Service spec");
    let labels = template.metadata.as_ref().unwrap().labels.clone().unwrap();
    assert!(labels_match(svc.selector.as_ref().unwrap(), &labels));
    let targets: BTreeSet<i32> = svc
        .ports
        .iter()
        .flatten()
        .map(|p| container_port(c, p.target_port.as_ref().expect("targetPort")))
        .collect();
    assert_eq!(
        targets, listener_ports,
        "the Service forwards to the listeners, not to admin"
    );
}

#[test]
fn pods_run_restricted_with_the_config_identity_and_state_mounted() {
    let base = Base::load();
    for (what, template) in base.pods() {
        let pod = spec(template);
        let psc = pod.security_context.as_ref().expect("pod securityContext");
        assert_eq!(psc.run_as_non_root, Some(true), "{what}");
        assert_ne!(psc.run_as_user, Some(0), "{what}");
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault"),
            "{what}"
        );
        for c in all_containers(pod) {
            let at = format!("{what}, container `{}`", c.name);
            let sc = c.security_context.as_ref().expect("securityContext");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{at}");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{at}");
            assert_eq!(sc.run_as_non_root, Some(true), "{at}");
            assert_eq!(sc.privileged, None, "{at}");
            let caps = sc.capabilities.as_ref().expect("capabilities");
            assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]), "{at}");
            assert_eq!(caps.add, None, "{at}");
            assert_eq!(
                sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
                Some("RuntimeDefault"),
                "{at}"
            );
            let resources = c.resources.as_ref().expect("resources");
            assert!(
                resources
                    .requests
                    .as_ref()
                    .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")),
                "{at}: cpu and memory requests"
            );
            assert!(
                resources
                    .limits
                    .as_ref()
                    .is_some_and(|l| l.contains_key("memory")),
                "{at}: a memory limit"
            );
        }
    }

    // The gateway: config from the ConfigMap at /etc/bindgate, the identity Secret read-only at
    // the config's identity_dir, the state_dir on an emptyDir. No API token.
    let pod = spec(base.gateway_pod());
    assert_eq!(pod.automount_service_account_token, Some(false));
    let (_, text, c) = pod_config(&base, pod);
    let config = yaml(&text);
    let volume = |mount_path: &str| {
        let m = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == mount_path)
            .unwrap_or_else(|| panic!("nothing mounted at {mount_path}"));
        let v = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .expect("the mount's volume");
        (m, v)
    };
    let (m, v) = volume("/etc/bindgate");
    assert_eq!(m.read_only, Some(true));
    assert!(v.config_map.is_some(), "/etc/bindgate is the ConfigMap");

    let identity_dir = config["ngrok"]["identity_dir"]
        .as_str()
        .expect("ngrok.identity_dir");
    assert_eq!(identity_dir, "/etc/bindgate/identity");
    let (m, v) = volume(identity_dir);
    assert_eq!(m.read_only, Some(true));
    let secret = v.secret.as_ref().expect("identity_dir is a Secret volume");
    assert_eq!(
        secret.secret_name.as_deref(),
        base.secret().metadata.name.as_deref()
    );
    assert_eq!(
        secret.default_mode.map(|m| m & 0o007),
        Some(0),
        "never world-readable"
    );

    let state_dir = config["state_dir"].as_str().expect("state_dir");
    let (m, v) = volume(state_dir);
    assert_ne!(m.read_only, Some(true));
    assert!(v.empty_dir.is_some(), "state_dir on an emptyDir");

    // The image's user is the pods' user, so the state dir the image creates is theirs.
    let text = read(&repo().join("Dockerfile"));
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    let uid: i64 = user
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("numeric USER");
    assert_ne!(uid, 0);
    for (what, template) in base.pods() {
        assert_eq!(
            spec(template)
                .security_context
                .as_ref()
                .unwrap()
                .run_as_user,
            Some(uid),
            "{what}"
        );
    }
}

#[test]
fn identity_job_writes_the_secret_the_gateway_mounts_and_may_touch_nothing_else() {
    let base = Base::load();
    let secret = base.secret();
    let name = secret.metadata.name.clone().unwrap();
    // The base never sets the identity's data: re-applying it must not wipe an issued identity.
    assert!(secret.data.is_none() && secret.string_data.is_none());

    let role = base.role();
    let rules = role.rules.as_ref().expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["secrets".to_owned()][..])
    );
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&[name.clone()][..])
    );
    let verbs: BTreeSet<&str> = rules[0].verbs.iter().map(String::as_str).collect();
    assert_eq!(verbs, BTreeSet::from(["get", "patch", "update"]));

    let binding = base.role_binding();
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let sa = base.service_account().metadata.name.clone().unwrap();
    let subjects = binding.subjects.as_ref().expect("subjects");
    assert!(
        subjects
            .iter()
            .any(|s| s.kind == "ServiceAccount" && s.name == sa)
    );

    let pod = spec(base.issuer_pod());
    assert_eq!(pod.service_account_name.as_deref(), Some(sa.as_str()));
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let cron = base.cron_job().spec.as_ref().unwrap();
    assert_eq!(
        cron.concurrency_policy.as_deref(),
        Some("Forbid"),
        "one writer"
    );

    // issue writes DIR; seed fills the same DIR from the Secret first; publish reads it.
    let issue = all_containers(pod)
        .into_iter()
        .find(|c| is_bindgate_image(c.image.as_deref()))
        .unwrap();
    let out = option_value(&container_argv(issue), "--out", "--out").expect("--out DIR");
    let mount_of = |c: &Container, path: &str| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == path)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| panic!("container `{}`: nothing at {path}", c.name))
    };
    let out_volume = mount_of(issue, &out);
    let seed = container(pod, "seed");
    let publish = container(pod, "publish");
    assert_eq!(mount_of(seed, &out), out_volume);
    assert_eq!(mount_of(publish, &out), out_volume);
    assert!(
        pod.init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .eq(["seed", "issue"]),
        "seed, then issue, before publish"
    );
    let current = mount_of(seed, "/etc/bindgate/identity");
    let current = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == current)
        .and_then(|v| v.secret.as_ref())
        .expect("seed reads the identity Secret");
    assert_eq!(current.secret_name.as_deref(), Some(name.as_str()));

    let script = |c: &Container| c.args.clone().unwrap_or_default().join(" ");
    let seed_script = script(seed);
    let publish_script = script(publish);
    for file in ["operator_id", "tls.crt", "tls.key"] {
        assert!(seed_script.contains(file), "seed copies {file}");
        assert!(
            publish_script.contains(&format!("--from-file={file}=\"$d/{file}\"")),
            "publish writes {file}"
        );
    }
    assert!(publish_script.contains(&format!("d={out}\n")));
    assert!(publish_script.contains(&format!("kubectl create secret generic {name} ")));
    assert!(publish_script.contains("kubectl apply --server-side"));
}

#[test]
fn hpa_and_pdb_follow_the_deployment() {
    let base = Base::load();
    let deployment = base.deployment();
    let spec_ = deployment.spec.as_ref().unwrap();
    assert_eq!(
        spec_.replicas, None,
        "the HPA owns the replica count; a fixed one is reset on each apply"
    );
    let hpa = base.hpa().spec.as_ref().unwrap();
    assert_eq!(hpa.scale_target_ref.kind, "Deployment");
    assert_eq!(
        Some(&hpa.scale_target_ref.name),
        deployment.metadata.name.as_ref()
    );
    let min = hpa.min_replicas.unwrap_or(1);
    assert!(
        min >= 2,
        "two replicas at least, so a disruption leaves one serving"
    );
    assert!(hpa.max_replicas >= min);

    let labels = base
        .gateway_pod()
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let pdb = base.pdb().spec.as_ref().unwrap();
    let selector = pdb
        .selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .unwrap();
    assert!(labels_match(selector, &labels));
    assert_eq!(
        spec_.selector.match_labels.as_ref(),
        Some(selector),
        "the PDB covers the Deployment's pods"
    );
    match (&pdb.max_unavailable, &pdb.min_available) {
        (Some(IntOrString::Int(n)), None) => assert!(*n >= 1 && *n < min),
        (None, Some(IntOrString::Int(n))) => assert!(*n >= 1 && *n < min),
        other => panic!("one of maxUnavailable / minAvailable, as a number: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The configs in the ConfigMap

/// Runs `bindgate validate` on a pod's config, the way the pod would see it: every `${VAR}`
/// without a default must be set by the container's `env`, and is given a placeholder value.
///
/// Honest note: the copy validated is not byte for byte the ConfigMap's. `state_dir` and
/// `ngrok.identity_dir` name directories that exist only in the pod, so they are rewritten to
/// temporary ones (the identity one holding a self-signed certificate, its key and an operator
/// id, the files the identity Secret holds); the test asserts nothing else differs.
fn validate_pod_config(base: &Base, pod: &PodSpec) {
    let (key, text, c) = pod_config(base, pod);
    let env: BTreeSet<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    let mut vars = BTreeMap::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("${") {
        let end = rest[i..].find('}').expect("closing }") + i;
        let var = &rest[i + 2..end];
        if !var.contains(":-") {
            assert!(
                env.contains(var),
                "{key}: ${{{var}}} is not set by container `{}`",
                c.name
            );
            vars.insert(
                var.to_owned(),
                format!("placeholder-{}", var.to_lowercase()),
            );
        }
        rest = &rest[end..];
    }

    let tmp = tempfile::tempdir().unwrap();
    let mut config = yaml(&text);
    let mut rewritten = Vec::new();
    if config["state_dir"].is_string() {
        config["state_dir"] = Value::from(tmp.path().join("state").to_str().unwrap());
        rewritten.push("state_dir");
    }
    if config["ngrok"]["identity_dir"].is_string() {
        let dir = tmp.path().join("identity");
        std::fs::create_dir(&dir).unwrap();
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["bindgate".into()])
            .unwrap()
            .self_signed(&key_pair)
            .unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key_pair.serialize_pem()).unwrap();
        std::fs::write(dir.join("operator_id"), "k8sop_packaging_test").unwrap();
        config["ngrok"]["identity_dir"] = Value::from(dir.to_str().unwrap());
        rewritten.push("ngrok.identity_dir");
    }
    // Nothing but those paths changed.
    let original = yaml(&text);
    let mut changed = Vec::new();
    not_kept(&original, &config, "", &mut changed);
    assert_eq!(changed.len(), rewritten.len(), "{changed:?}");

    let file = tmp.path().join("config.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let out = Command::new(BINDGATE)
        .arg("validate")
        .arg("-c")
        .arg(&file)
        .envs(&vars)
        .output()
        .expect("run bindgate validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "OK",
        "ConfigMap key `{key}` (paths rewritten: {rewritten:?}) does not validate:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_identity_issuer_config_passes_validate() {
    let base = Base::load();
    validate_pod_config(&base, spec(base.issuer_pod()));
}

/// The gateway config reads the shared identity (`ngrok.identity_dir`).
#[test]
fn the_gateway_config_passes_validate() {
    let base = Base::load();
    validate_pod_config(&base, spec(base.gateway_pod()));
}

// ---------------------------------------------------------------------------------------------
// The image, systemd, launchd

/// The `ARG NAME=default` values of the Dockerfile: the base images its `FROM` lines name.
fn dockerfile_base_images() -> Vec<String> {
    read(&repo().join("Dockerfile"))
        .lines()
        .filter_map(|l| l.strip_prefix("ARG "))
        .filter_map(|a| a.split_once('='))
        .filter(|(name, _)| name.ends_with("_IMAGE"))
        .map(|(_, image)| image.trim().to_owned())
        .collect()
}

/// Builds the image with buildah or podman when one is installed and can pull the base images
/// (a registry is reachable); otherwise prints why it did not. Where it builds, the image must
/// build and run `bindgate --version` as its non-root user.
#[test]
fn the_image_builds_where_a_builder_and_the_base_images_are_reachable() {
    let Some(builder) = ["buildah", "podman"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        eprintln!("skipped: neither buildah nor podman is installed");
        return;
    };
    let images = dockerfile_base_images();
    assert_eq!(
        images.len(),
        2,
        "the builder and the runtime image: {images:?}"
    );
    for image in &images {
        let pull = Command::new(builder)
            .args(["pull", "-q", image])
            .output()
            .unwrap();
        if !pull.status.success() {
            eprintln!(
                "skipped: {builder} cannot pull {image} (no registry reachable?): {}",
                String::from_utf8_lossy(&pull.stderr).trim()
            );
            return;
        }
    }
    let tag = "localhost/bindgate-packaging-test:latest";
    let build = Command::new(builder)
        .args(["build", "-t", tag, "-f", "Dockerfile", "."])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{builder} build failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let run = Command::new("podman")
        .args(["run", "--rm", tag, "--version"])
        .output();
    if let Ok(run) = run {
        assert!(
            run.status.success() && String::from_utf8_lossy(&run.stdout).contains("bindgate"),
            "the image does not run bindgate: {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_non_root_in_another() {
    let text = read(&repo().join("Dockerfile"));
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    assert!(stages[0].ends_with(" AS build"), "{}", stages[0]);
    let last = text.rsplit_once("\nFROM ").unwrap().1;
    let user = last
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the last stage");
    assert!(
        !["0", "root"].contains(&user.split(':').next().unwrap()),
        "USER {user}"
    );
    assert!(last.contains("--chown=65532:65532 /out/var/lib/bindgate /var/lib/bindgate"));
    assert!(user.starts_with("65532"));
    let (entrypoint, cmd) = dockerfile_entrypoint_and_cmd();
    assert_eq!(entrypoint, ["bindgate"]);
    assert_eq!(cmd, ["run", "-c", "/etc/bindgate/config.yaml"]);
    cli_accepts(&cmd).unwrap();
    assert!(last.contains("EXPOSE 9901"));
    let ignore = read(&repo().join(".dockerignore"));
    for excluded in ["target/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l == excluded),
            ".dockerignore: {excluded}"
        );
    }
}

/// `key=value` lines of a unit file, in order (repeated keys kept).
fn unit_directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn the_systemd_unit_is_hardened_and_runs_the_cli() {
    let path = repo().join("deploy/systemd/bindgate.service");
    let text = read(&path);
    let directives = unit_directives(&text);
    let get = |key: &str| -> Vec<&str> {
        directives
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| -> &str {
        let v = get(key);
        assert_eq!(v.len(), 1, "{key}: {v:?}");
        v[0]
    };
    for (key, value) in [
        ("Type", "exec"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "bindgate"),
        ("StateDirectoryMode", "0700"),
        ("ConfigurationDirectory", "bindgate"),
        // The README's access_log example writes under /var/log/bindgate, read-only otherwise.
        ("LogsDirectory", "bindgate"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
    assert_eq!(get("SystemCallFilter")[0], "@system-service");
    // bindgate raises its soft limit to the hard one (setrlimit): @resources must stay allowed.
    assert!(
        !get("SystemCallFilter")
            .iter()
            .any(|f| f.starts_with('~') && f.contains("@resources"))
    );
    let nofile: u64 = one("LimitNOFILE").parse().expect("a number");
    assert!(nofile >= 65_536, "LimitNOFILE {nofile}");
    let stop = bindgate::config::parse_duration(one("TimeoutStopSec")).expect("a duration");
    assert!(
        stop > std::time::Duration::from_secs(30),
        "TimeoutStopSec outlasts the default drain_timeout"
    );
    assert!(get("User").is_empty(), "DynamicUser, no fixed user");

    let exec: Vec<String> = one("ExecStart")
        .split_whitespace()
        .map(String::from)
        .collect();
    let args = bindgate_args("ExecStart", &exec);
    assert_eq!(
        option_value(&args, "-c", "--config").as_deref(),
        Some("/etc/bindgate/config.yaml"),
        "the config in ConfigurationDirectory"
    );
    cli_accepts(&args).unwrap();

    // systemd's own check, when it is installed. It requires ExecStart's binary to exist, so
    // a copy is verified with that one path pointed at the binary just built.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("bindgate.service");
    std::fs::write(&copy, text.replace(&exec[0], BINDGATE)).unwrap();
    match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
    {
        Ok(out) => {
            // It exits 0 on unknown keys and bad values, only printing them: both count.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let about_unit: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("bindgate.service"))
                .collect();
            assert!(
                out.status.success() && about_unit.is_empty(),
                "systemd-analyze verify: {}\n{stderr}",
                out.status
            );
        }
        Err(e) => println!("skipped `systemd-analyze verify`: it cannot run here ({e})"),
    }
}

#[test]
fn the_launchd_plist_keeps_bindgate_running_and_runs_the_cli() {
    let path = repo().join("deploy/launchd/com.bindgate.plist");
    let plist = plist::Value::from_file(&path).expect("a property list");
    let dict = plist.as_dictionary().expect("a dictionary");
    assert_eq!(
        dict.get("Label").and_then(plist::Value::as_string),
        Some("com.bindgate")
    );
    assert_eq!(
        path.file_stem().and_then(|s| s.to_str()),
        Some("com.bindgate")
    );
    let argv: Vec<String> = dict
        .get("ProgramArguments")
        .and_then(plist::Value::as_array)
        .expect("ProgramArguments")
        .iter()
        .map(|v| v.as_string().expect("a string").to_owned())
        .collect();
    let args = bindgate_args("ProgramArguments", &argv);
    assert_eq!(args.first().map(String::as_str), Some("run"));
    assert!(option_value(&args, "-c", "--config").is_some());
    cli_accepts(&args).unwrap();
    assert_eq!(
        dict.get("RunAtLoad").and_then(plist::Value::as_boolean),
        Some(true)
    );
    let keep_alive = dict
        .get("KeepAlive")
        .and_then(plist::Value::as_dictionary)
        .expect("KeepAlive");
    assert_eq!(
        keep_alive
            .get("SuccessfulExit")
            .and_then(plist::Value::as_boolean),
        Some(false),
        "restarted after a failure, not after a clean stop"
    );
    let exit_timeout = dict
        .get("ExitTimeOut")
        .and_then(plist::Value::as_signed_integer)
        .expect("ExitTimeOut");
    assert!(
        exit_timeout > 30,
        "launchd waits out the default drain_timeout"
    );
    let files = |key: &str| {
        dict.get(key)
            .and_then(plist::Value::as_dictionary)
            .and_then(|d| d.get("NumberOfFiles"))
            .and_then(plist::Value::as_signed_integer)
            .unwrap_or_else(|| panic!("{key}.NumberOfFiles"))
    };
    assert!(files("SoftResourceLimits") <= files("HardResourceLimits"));
    assert!(files("HardResourceLimits") >= 65_536);
}
