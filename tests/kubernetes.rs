//! The Kubernetes manifests in `contrib/kubernetes/` (issue 16): valid
//! against the Kubernetes schemas (`kubernetes-validate --strict`, from
//! PyPI), and consistent with rip-server's own settings — the probes reach
//! the status listener the arguments bind, and the grace period covers the
//! preStop pause, the shutdown timeout and the workers' stop. What the
//! probes see while a server drains is tested for real in `tests/serve.rs`.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::process::Command;

use support::*;

const MANIFEST: &str = "contrib/kubernetes/rip-server.yaml";

#[test]
fn the_manifests_pass_the_kubernetes_schemas() {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", MANIFEST])
        .current_dir(repo())
        .output()
        .expect("kubernetes-validate (python3 -m pip install kubernetes-validate==1.37.0)");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    for resource in ["deployment/rip-server", "service/rip-server"] {
        assert!(
            said.contains(&format!("passed for resource {resource}")),
            "{said}"
        );
    }
}

/// The manifest's documents, as JSON (PyYAML, which kubernetes-validate
/// brings).
fn documents() -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            MANIFEST,
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_probes_reach_the_status_listener_and_the_grace_period_covers_a_drain() {
    let docs = documents();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .map(str::to_string)
    };
    let port_of = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["containerPort"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("no container port named {name}"))
    };
    // Every probe goes to the status listener, on its routes.
    let status_bind = flag("status-bind").expect("--status-bind");
    let status_port: u64 = status_bind.rsplit(':').next().unwrap().parse().unwrap();
    for (probe, path) in [
        ("readinessProbe", "/server"),
        ("startupProbe", "/server"),
        ("livenessProbe", "/status"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(
            port_of(get["port"].as_str().unwrap()),
            status_port,
            "{probe}"
        );
    }
    let http: u64 = args
        .iter()
        .find_map(|a| a.strip_prefix("http:"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(port_of("http"), http);
    // The Service sends its traffic to that port.
    let service = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
    // preStop + the shutdown timeout + the workers' stop (5 s at most) fit
    // in the grace period.
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let shutdown_ms: u64 = flag("shutdown-timeout-ms").unwrap().parse().unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > pause + shutdown_ms / 1000 + 5,
        "terminationGracePeriodSeconds {grace} is too short"
    );
    // The arguments start a server (any rip-server refuses is exit 2),
    // with the app and the ports swapped for ones of this test.
    let here: Vec<String> = args
        .iter()
        .map(|a| match *a {
            "/app" => "builtin:hello".to_string(),
            a if a.starts_with("http:") => "http:0".to_string(),
            a if a.starts_with("--status-bind=") => "--status-bind=127.0.0.1:0".to_string(),
            a => a.to_string(),
        })
        .collect();
    let here: Vec<&str> = here.iter().map(String::as_str).collect();
    let mut server = Server::start(&here);
    assert_eq!(server.get("/ping").text(), "pong");
    assert!(server
        .stdout
        .text()
        .contains("; status on http://127.0.0.1:"));
    assert!(server.stop().success());
}
