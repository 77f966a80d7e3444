// Package schemas holds the JSON Schemas of the messages the pump sends and
// accepts (the message contract, see docs/message-contract.md), embedded so
// the pump validates every message against the very files the contract
// publishes.
package schemas

import "embed"

// Files are the schema files, by name.
//
//go:embed *.json
var Files embed.FS

// Schema file names.
const (
	BillerMessage = "biller-message.v1.json"
	ItemMessage   = "item-message.v1.json"
)

// ItemMessageFor returns the schema file of an item type's messages, or
// ItemMessage when the type has no schema of its own.
func ItemMessageFor(itemType string) string {
	name := itemType + "-item-message.v1.json"
	if _, err := Files.Open(name); err == nil {
		return name
	}
	return ItemMessage
}
