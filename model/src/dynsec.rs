//! Device logins in Mosquitto's dynamic-security plugin: the commands Tidemark sends on the
//! plugin's control topic and how it reads the answers. Plain data; the API sends them.
//!
//! Each device Tidemark issues a credential to is one plugin client named by its device key (the
//! MQTT user name, and the common name of its certificate), with one role of its own,
//! `tidemark-device-<key>`, that allows publishing to `<prefix>/readings/<key>` and nothing else.
//! (Mosquitto 2.0's plugin does not substitute `%u` in its rules, hence a role per device.) The
//! plugin defers everything its rules do not allow to the broker's ACL file, which grants devices
//! only the reading of alerts: a device without a plugin client (never issued, or revoked) cannot
//! publish at all, even when its certificate still passes the TLS handshake.

use crate::id::DeviceId;
use serde_json::{json, Value};

/// The topic commands are published to.
pub const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
/// The topic the plugin answers on.
pub const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
/// The start of every role Tidemark makes; a plugin client with such a role is Tidemark's.
pub const ROLE_PREFIX: &str = "tidemark-device-";

/// The role that lets `device` publish its readings.
pub fn role_name(device: &DeviceId) -> String {
    format!("{ROLE_PREFIX}{device}")
}

/// A plugin error that means the thing to remove is already gone.
pub fn is_absent(error: &str) -> bool {
    matches!(error, "Client not found" | "Role not found")
}

/// The commands that remove `device`'s login and role, each tagged with `tag`. Answers of
/// [`is_absent`] errors mean there was nothing to remove.
pub fn remove_device(device: &DeviceId, tag: &str) -> Vec<Value> {
    vec![
        json!({"command": "deleteClient", "username": device.as_str(), "correlationData": tag}),
        json!({"command": "deleteRole", "rolename": role_name(device), "correlationData": tag}),
    ]
}

/// The commands that give `device` a login (with `password`, or none for a device that logs in
/// with its certificate) that publishes to `readings_topic` only, and only with the device key as
/// client id (so that no device, on any listener, can take another client's session). Removing
/// any earlier login first ([`remove_device`]) disconnects a device still connected with it.
pub fn add_device(
    device: &DeviceId,
    readings_topic: &str,
    password: Option<&str>,
    tag: &str,
) -> Vec<Value> {
    let role = role_name(device);
    let mut client = json!({
        "command": "createClient",
        "username": device.as_str(),
        "clientid": device.as_str(),
        "roles": [{"rolename": role}],
        "correlationData": tag,
    });
    if let Some(password) = password {
        client["password"] = Value::from(password);
    }
    vec![
        json!({"command": "createRole", "rolename": role, "correlationData": tag}),
        json!({
            "command": "addRoleACL", "rolename": role, "acltype": "publishClientSend",
            "topic": readings_topic, "allow": true, "correlationData": tag,
        }),
        client,
    ]
}

/// The command that lists every plugin client with its roles.
pub fn list_clients(tag: &str) -> Value {
    json!({"command": "listClients", "verbose": true, "count": -1, "correlationData": tag})
}

/// A control message holding `commands`.
pub fn message(commands: &[Value]) -> Vec<u8> {
    json!({ "commands": commands }).to_string().into_bytes()
}

/// One answer of the plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub command: String,
    pub error: Option<String>,
    pub tag: Option<String>,
    pub data: Option<Value>,
}

/// The answers in one response message; None if it is not one.
pub fn answers(payload: &[u8]) -> Option<Vec<Answer>> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    let list = value.get("responses")?.as_array()?;
    Some(
        list.iter()
            .map(|answer| Answer {
                command: text(answer, "command").unwrap_or_default(),
                error: text(answer, "error"),
                tag: text(answer, "correlationData"),
                data: answer.get("data").cloned(),
            })
            .collect(),
    )
}

fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// The devices that have a Tidemark role among the clients of a `listClients` answer's data.
pub fn managed_clients(data: &Value) -> Vec<String> {
    let Some(clients) = data.get("clients").and_then(Value::as_array) else {
        return Vec::new();
    };
    clients
        .iter()
        .filter(|client| {
            client
                .get("roles")
                .and_then(Value::as_array)
                .is_some_and(|roles| {
                    roles.iter().any(|r| {
                        r.get("rolename")
                            .and_then(Value::as_str)
                            .is_some_and(|name| name.starts_with(ROLE_PREFIX))
                    })
                })
        })
        .filter_map(|client| client.get("username").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_gets_a_role_of_its_own_for_its_own_topic() {
        let device = DeviceId::parse("gauge-7").unwrap();
        let commands = add_device(&device, "tidemark/v1/readings/gauge-7", Some("pw"), "t1");
        assert_eq!(commands[0]["rolename"], "tidemark-device-gauge-7");
        assert_eq!(commands[1]["topic"], "tidemark/v1/readings/gauge-7");
        assert_eq!(commands[1]["acltype"], "publishClientSend");
        assert_eq!(commands[2]["username"], "gauge-7");
        assert_eq!(commands[2]["clientid"], "gauge-7");
        assert_eq!(commands[2]["password"], "pw");
        let without = add_device(&device, "t", None, "t2");
        assert!(without[2].get("password").is_none());
        assert!(remove_device(&device, "t3")
            .iter()
            .all(|c| c["correlationData"] == "t3"));
    }

    #[test]
    fn answers_and_managed_clients_are_read_from_the_plugin() {
        let payload = br#"{"responses":[{"command":"deleteClient","error":"Client not found","correlationData":"x"},
            {"command":"listClients","data":{"clients":[
              {"username":"admin","roles":[{"rolename":"admin"}]},
              {"username":"gauge-7","roles":[{"rolename":"tidemark-device-gauge-7"}]}]},"correlationData":"y"}]}"#;
        let answers = answers(payload).unwrap();
        assert_eq!(answers[0].error.as_deref(), Some("Client not found"));
        assert!(is_absent(answers[0].error.as_deref().unwrap()));
        assert_eq!(answers[1].tag.as_deref(), Some("y"));
        assert_eq!(
            managed_clients(answers[1].data.as_ref().unwrap()),
            ["gauge-7"]
        );
        assert!(super::answers(b"not json").is_none());
    }
}
