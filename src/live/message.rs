//! Every message the server sends on a live socket, as one type. The socket, the hub
//! and the bus all carry these values, so a message has one shape wherever it was
//! made; docs/PROTOCOL.md documents each variant (a test holds the two together).

use serde::{Deserialize, Serialize};

use crate::views::{CampaignReport, CampaignView, CartBody, OrderBody};

/// A server→client message; serialised as `{"type": "<variant>", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The first message on every socket: the limits the client must keep to, so that
    /// the browser never hard-codes them.
    Welcome(Welcome),
    /// The units a shopper can buy of `sku`; `seq` orders values, so a late one can be
    /// recognised and dropped.
    Stock {
        /// The SKU.
        sku: String,
        /// Sellable units (absolute, not a delta).
        available: i64,
        /// `inventory.stock_seq` of this value.
        seq: i64,
    },
    /// The session's cart changed; the body of `GET /api/cart`.
    Cart {
        /// The cart after the change.
        cart: CartBody,
    },
    /// A line's reservation lapsed and its units went back to stock.
    ReservationExpired {
        /// The SKU.
        sku: String,
        /// Units released.
        quantity: i64,
    },
    /// An order of the session was placed or changed status.
    Order {
        /// The order, as `GET /api/orders/{id}` shows it.
        order: OrderBody,
    },
    /// A campaign started.
    Campaign {
        /// The campaign.
        campaign: CampaignView,
    },
    /// A client message the server could not understand; the socket stays open.
    Error {
        /// What was wrong.
        code: ErrorCode,
        /// Details for a developer.
        message: String,
    },
    /// The session's place in a campaign's waiting room moved, or its turn came.
    Queue {
        /// The campaign.
        campaign_id: uuid::Uuid,
        /// Earlier joiners still waiting; 0 once admitted.
        position: i64,
        /// Whether the session may now reserve the campaign's SKUs.
        admitted: bool,
    },
    /// A monitored campaign's numbers, about once a second, to a socket that sent the
    /// `monitor` op with the admin token.
    CampaignReport {
        /// The body of `GET /api/admin/campaigns/{id}/report` (boxed: the largest
        /// message by far, it would otherwise size every message, on the bus too).
        report: Box<CampaignReport>,
    },
}

/// The limits of one socket, sent in the `welcome` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Most SKUs one socket may subscribe to.
    pub max_subscriptions: usize,
    /// Stock messages per SKU are at most this often, in milliseconds.
    pub coalesce_ms: u64,
    /// Largest client frame in bytes.
    pub max_frame: usize,
    /// Client messages per second.
    pub rate: u32,
    /// Client messages allowed in a burst.
    pub burst: u32,
    /// What a SKU looks like, as a regular expression (JavaScript syntax).
    pub sku_pattern: String,
}

/// Why a client message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an operation of the protocol, or not a valid SKU.
    InvalidMessage,
    /// A `monitor` op whose token is not the admin token.
    Unauthorized,
    /// A `monitor` op for a campaign this node does not know.
    NotFound,
}

impl ServerMessage {
    /// Every `type` tag, in the order of the variants. `type_name` maps each variant to
    /// its entry, so a new variant cannot be added without extending this list (and the
    /// protocol document, which a test checks against it).
    pub const TYPES: [&'static str; 9] = [
        "welcome",
        "stock",
        "cart",
        "reservation_expired",
        "order",
        "campaign",
        "error",
        "queue",
        "campaign_report",
    ];

    /// The `type` tag of this message.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Welcome(_) => Self::TYPES[0],
            Self::Stock { .. } => Self::TYPES[1],
            Self::Cart { .. } => Self::TYPES[2],
            Self::ReservationExpired { .. } => Self::TYPES[3],
            Self::Order { .. } => Self::TYPES[4],
            Self::Campaign { .. } => Self::TYPES[5],
            Self::Error { .. } => Self::TYPES[6],
            Self::Queue { .. } => Self::TYPES[7],
            Self::CampaignReport { .. } => Self::TYPES[8],
        }
    }

    /// The text frame; `None` (logged) if it cannot be encoded, which these types never
    /// cause.
    pub fn encode(&self) -> Option<String> {
        match serde_json::to_string(self) {
            Ok(text) => Some(text),
            Err(err) => {
                tracing::error!(%err, kind = self.type_name(), "cannot encode a server message");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::views::{CartLineBody, OrderLineBody};

    /// One message of each type.
    fn samples() -> Vec<ServerMessage> {
        vec![
            ServerMessage::Welcome(Welcome {
                max_subscriptions: 200,
                coalesce_ms: 100,
                max_frame: 4096,
                rate: 20,
                burst: 40,
                sku_pattern: "^[A-Z]+$".into(),
            }),
            ServerMessage::Stock {
                sku: "TEE-M".into(),
                available: 4,
                seq: 17,
            },
            ServerMessage::Cart {
                cart: CartBody {
                    lines: vec![CartLineBody {
                        sku: "TEE-M".into(),
                        product_slug: "tee".into(),
                        product_name: "Tee".into(),
                        attributes: BTreeMap::from([("size".into(), "M".into())]),
                        quantity: 2,
                        unit_price_minor: 1500,
                        line_total_minor: 3000,
                        currency: "EUR".into(),
                        expires_at_ms: 1_700_000_000_000,
                    }],
                    total_minor: 3000,
                    currency: Some("EUR".into()),
                    version: 3,
                },
            },
            ServerMessage::ReservationExpired {
                sku: "TEE-M".into(),
                quantity: 2,
            },
            ServerMessage::Order {
                order: OrderBody {
                    id: uuid::Uuid::nil(),
                    status: surge_actors::order::OrderStatus::Placed,
                    email: "a@b.co".into(),
                    lines: vec![OrderLineBody {
                        sku: "TEE-M".into(),
                        quantity: 2,
                        unit_price_minor: 1500,
                    }],
                    total_minor: 3000,
                    currency: "EUR".into(),
                    created_at_ms: 1,
                },
            },
            ServerMessage::Campaign {
                campaign: CampaignView {
                    id: uuid::Uuid::nil(),
                    name: "Midnight sale".into(),
                    product_slug: None,
                    state: crate::views::CampaignState::Live,
                    starts_at_ms: 1,
                    ends_at_ms: 2,
                    server_time_ms: 1,
                    per_customer_limit: Some(2),
                    hold_secs: None,
                    skus: vec![crate::views::CampaignSkuView {
                        sku: "TEE-M".into(),
                        name: "Tee".into(),
                        currency: "EUR".into(),
                        price_minor: 1500,
                        sale_price_minor: Some(999),
                        available: 3,
                    }],
                    queue: None,
                },
            },
            ServerMessage::Error {
                code: ErrorCode::InvalidMessage,
                message: "expected value".into(),
            },
            ServerMessage::Queue {
                campaign_id: uuid::Uuid::nil(),
                position: 12,
                admitted: false,
            },
            ServerMessage::CampaignReport {
                report: Box::new(crate::views::CampaignReport {
                    campaign_id: uuid::Uuid::nil(),
                    name: "Midnight sale".into(),
                    state: crate::views::CampaignState::Live,
                    starts_at_ms: 1,
                    ends_at_ms: 2,
                    server_time_ms: 1,
                    units_sold: 3,
                    units_left: 0,
                    orders: 2,
                    revenue_minor: 2997,
                    currency: "EUR".into(),
                    sold_out_at_ms: Some(1),
                    refusals: BTreeMap::from([("queued".into(), 4)]),
                    sockets: 5,
                    queue: Some(crate::views::QueueReport {
                        joined: 3,
                        admitted: 2,
                        waiting: 1,
                        abandoned: 0,
                        wait_p50_ms: Some(10),
                        wait_p99_ms: Some(20),
                    }),
                }),
            },
        ]
    }

    #[test]
    fn the_type_tag_is_the_listed_name_and_messages_round_trip() {
        let samples = samples();
        let names: Vec<&str> = samples.iter().map(ServerMessage::type_name).collect();
        assert_eq!(names, ServerMessage::TYPES, "one sample per type, in order");
        for message in samples {
            let text = message.encode().expect("encodes");
            let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(json["type"], message.type_name(), "{text}");
            let back: ServerMessage = serde_json::from_str(&text).expect("decodes");
            assert_eq!(back, message);
        }
    }

    #[test]
    fn the_wire_format_is_flat_and_tagged() {
        let stock = serde_json::to_value(&samples()[1]).expect("JSON");
        assert_eq!(
            stock,
            serde_json::json!({"type": "stock", "sku": "TEE-M", "available": 4, "seq": 17})
        );
        let error = serde_json::to_value(&samples()[6]).expect("JSON");
        assert_eq!(
            error,
            serde_json::json!({"type": "error", "code": "invalid_message", "message": "expected value"})
        );
        let welcome = serde_json::to_value(&samples()[0]).expect("JSON");
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["max_subscriptions"], 200);
        assert_eq!(welcome["coalesce_ms"], 100);
    }

    /// The `type` of each documented server message, in the order the document lists
    /// them (its "Server to client" table).
    fn documented_types() -> Vec<String> {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let section = doc
            .split("## Server to client")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("docs/PROTOCOL.md has a \"Server to client\" section");
        section
            .lines()
            .filter_map(|line| line.strip_prefix("| `{\"type\":\""))
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_protocol_document_lists_every_type_and_no_other() {
        let documented = documented_types();
        for name in ServerMessage::TYPES {
            assert!(
                documented.iter().any(|d| d == name),
                "docs/PROTOCOL.md does not document the `{name}` message"
            );
        }
        for name in &documented {
            assert!(
                ServerMessage::TYPES.contains(&name.as_str()),
                "docs/PROTOCOL.md documents `{name}`, which the server never sends"
            );
        }
    }
}
