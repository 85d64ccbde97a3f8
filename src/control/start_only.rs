//! Settings that are read once, at start-up: the admin server's address, `state_dir`, the
//! `ngrok:` section (the API client and the registration made with it, selectors included) and
//! whether discovery runs at all.
//!
//! A reload that changes one of them applies the rest of the file and keeps these as they were
//! started, so the snapshot, `/config_dump` and every later rebuild describe what is in force.
//! Each such setting is named in `control.restart_pending`, in
//! `bindgate_config_restart_pending` and in one warning, until a restart reads it or the file
//! goes back to the value in force. The file's own values are still checked as the next start
//! will read them, so a reload never accepts a file that would not start.

use std::path::PathBuf;

use crate::config::{AdminConfig, Config, NgrokConfig};

/// The values in force of the settings a reload cannot change.
#[derive(Clone, Debug)]
pub struct StartOnly {
    admin: Option<AdminConfig>,
    state_dir: Option<PathBuf>,
    ngrok: Option<NgrokConfig>,
    /// `dynamic_resources.bound_endpoints.selectors` when discovery runs, `None` when it does
    /// not (the discovery task is started, and the selectors registered, at start-up only).
    discovery: Option<Vec<String>>,
}

impl StartOnly {
    pub fn of(cfg: &Config) -> Self {
        StartOnly {
            admin: cfg.admin.clone(),
            state_dir: cfg.state_dir.clone(),
            ngrok: cfg.ngrok.clone(),
            discovery: bound_endpoints(cfg).map(|b| b.selectors.clone()),
        }
    }

    /// The settings `cfg` gives other values than those in force, as config paths, in the
    /// order of the file's sections. Secrets are named, never shown.
    pub fn changes(&self, cfg: &Config) -> Vec<&'static str> {
        let file = StartOnly::of(cfg);
        let mut out = Vec::new();
        match (&self.admin, &file.admin) {
            (Some(a), Some(b)) => {
                differ(&mut out, "admin.address", &a.address, &b.address);
                differ(
                    &mut out,
                    "admin.allow_non_loopback",
                    &a.allow_non_loopback,
                    &b.allow_non_loopback,
                );
            }
            (a, b) => differ(&mut out, "admin", a, b),
        }
        differ(&mut out, "state_dir", &self.state_dir, &file.state_dir);
        match (&self.ngrok, &file.ngrok) {
            (Some(a), Some(b)) => {
                differ(&mut out, "ngrok.api_url", &a.api_url, &b.api_url);
                differ(&mut out, "ngrok.api_key", &a.api_key, &b.api_key);
                differ(&mut out, "ngrok.api_ca", &a.api_ca, &b.api_ca);
                differ(
                    &mut out,
                    "ngrok.api_timeout",
                    &a.api_timeout,
                    &b.api_timeout,
                );
                differ(
                    &mut out,
                    "ngrok.registration",
                    &a.registration,
                    &b.registration,
                );
                differ(
                    &mut out,
                    "ngrok.identity_dir",
                    &a.identity_dir,
                    &b.identity_dir,
                );
            }
            (a, b) => differ(&mut out, "ngrok", a, b),
        }
        match (&self.discovery, &file.discovery) {
            (Some(a), Some(b)) => differ(
                &mut out,
                "dynamic_resources.bound_endpoints.selectors",
                a,
                b,
            ),
            (None, Some(_)) => out.push("dynamic_resources.bound_endpoints"),
            // Removing discovery applies: its endpoints are withdrawn like any listener.
            (_, None) => {}
        }
        out
    }

    /// Puts the values in force back into `cfg`, whatever the file says of them.
    pub fn restore(&self, cfg: &mut Config) {
        cfg.admin.clone_from(&self.admin);
        cfg.state_dir.clone_from(&self.state_dir);
        cfg.ngrok.clone_from(&self.ngrok);
        let file = cfg.dynamic_resources.as_mut();
        match (&self.discovery, file) {
            (None, Some(d)) => d.bound_endpoints = None,
            (Some(selectors), Some(d)) => {
                if let Some(b) = d.bound_endpoints.as_mut() {
                    b.selectors.clone_from(selectors);
                }
            }
            (_, None) => {}
        }
    }
}

fn differ<T: PartialEq>(out: &mut Vec<&'static str>, path: &'static str, a: &T, b: &T) {
    if a != b {
        out.push(path);
    }
}

fn bound_endpoints(cfg: &Config) -> Option<&crate::config::BoundEndpoints> {
    cfg.dynamic_resources.as_ref()?.bound_endpoints.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(text, "t.yaml", PathBuf::from("/"), |k| {
            (k == "KEY").then(|| "k2".to_owned())
        })
        .unwrap()
        .config
    }

    const BASE: &str = "version: 1
admin: { address: 127.0.0.1:9901 }
state_dir: /var/lib/a
ngrok: { api_key: k1 }
dynamic_resources:
  bound_endpoints:
    ingress: ngrok
    selectors: ['true']
    expose: { mode: port_range, ports: 20000-20100 }
ingresses: [ { name: ngrok } ]
";

    #[test]
    fn each_setting_read_at_start_up_is_named_and_secrets_only_by_name() {
        let started = StartOnly::of(&config(BASE));
        assert!(started.changes(&config(BASE)).is_empty());
        let changed = BASE
            .replace("9901", "9902")
            .replace("/var/lib/a", "/var/lib/b")
            .replace(
                "api_key: k1",
                "api_key: ${KEY}, api_url: 'https://api.example'",
            )
            .replace("['true']", "['false']");
        assert_eq!(
            started.changes(&config(&changed)),
            [
                "admin.address",
                "state_dir",
                "ngrok.api_url",
                "ngrok.api_key",
                "dynamic_resources.bound_endpoints.selectors"
            ]
        );
        let without = BASE
            .replace("admin: { address: 127.0.0.1:9901 }\n", "")
            .replace("ngrok: { api_key: k1 }\n", "");
        assert_eq!(started.changes(&config(&without)), ["admin", "ngrok"]);
    }

    #[test]
    fn discovery_added_after_start_waits_and_removed_applies() {
        let bare = BASE.split("dynamic_resources").next().unwrap().to_owned()
            + "ingresses: [ { name: ngrok } ]\n";
        let started = StartOnly::of(&config(&bare));
        assert_eq!(
            started.changes(&config(BASE)),
            ["dynamic_resources.bound_endpoints"]
        );
        let mut file = config(BASE);
        started.restore(&mut file);
        assert!(bound_endpoints(&file).is_none());

        let with = StartOnly::of(&config(BASE));
        assert!(with.changes(&config(&bare)).is_empty());
    }

    #[test]
    fn restore_gives_back_the_values_in_force_and_keeps_the_rest_of_the_file() {
        let started = config(BASE);
        let changed = BASE
            .replace("9901", "9902")
            .replace("api_key: k1", "api_key: ${KEY}")
            .replace("['true']", "['false']")
            .replace("20000-20100", "21000-21100");
        let mut file = config(&changed);
        StartOnly::of(&started).restore(&mut file);
        assert_eq!(file.admin, started.admin);
        assert_eq!(file.ngrok, started.ngrok);
        let b = bound_endpoints(&file).unwrap();
        assert_eq!(b.selectors, ["true"]);
        assert_eq!(b.expose.ports.as_deref(), Some("21000-21100"));
    }
}
