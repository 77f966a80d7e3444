package pump

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/datapump/datapump/docs/schemas"
)

// MaxBodyBytes bounds a message body; anything larger is refused.
const MaxBodyBytes = 64 << 10

// contract holds the compiled message schemas.
type contract struct {
	byName map[string]*jsonschema.Schema
	// byItemType names the schema of each item type that has its own.
	byItemType map[string]string
	// plainItemType holds the item types whose own schema is the generic
	// item schema with itemType narrowed to the type (see canonicalItem).
	plainItemType map[string]bool
}

var loadContract = sync.OnceValues(func() (*contract, error) {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	names, err := fs.Glob(schemas.Files, "*.json")
	if err != nil {
		return nil, err
	}
	docs := make(map[string]any, len(names))
	for _, name := range names {
		raw, err := schemas.Files.ReadFile(name)
		if err != nil {
			return nil, err
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("schema %s: %w", name, err)
		}
		if err := c.AddResource(name, doc); err != nil {
			return nil, fmt.Errorf("schema %s: %w", name, err)
		}
		docs[name] = doc
	}
	out := &contract{byName: map[string]*jsonschema.Schema{}, byItemType: map[string]string{}, plainItemType: map[string]bool{}}
	generic, _ := docs[schemas.ItemMessage].(map[string]any)
	for _, name := range names {
		s, err := c.Compile(name)
		if err != nil {
			return nil, fmt.Errorf("compile schema %s: %w", name, err)
		}
		out.byName[name] = s
		if itemType, ok := strings.CutSuffix(name, "-"+schemas.ItemMessage); ok {
			out.byItemType[itemType] = name
			own, _ := docs[name].(map[string]any)
			out.plainItemType[itemType] = plainItemSchema(generic, own, itemType)
		}
	}
	return out, nil
})

// validateBody checks a message body against the named schema file. The
// error names the offending field.
func validateBody(body []byte, schema string) error {
	return validateBodyBy(body, func(any) []string { return []string{schema} })
}

// validateBodyBy parses body once and checks it against each schema file
// pick names for the parsed document, in order.
func validateBodyBy(body []byte, pick func(doc any) []string) error {
	if len(body) > MaxBodyBytes {
		return fmt.Errorf("%w: body: %d bytes exceeds the %d-byte limit", ErrInvalidMessage, len(body), MaxBodyBytes)
	}
	c, err := loadContract()
	if err != nil {
		return fmt.Errorf("load message schemas: %w", err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: body is not JSON: %v", ErrInvalidMessage, err)
	}
	for _, name := range pick(doc) {
		s, ok := c.byName[name]
		if !ok {
			return fmt.Errorf("no schema %s", name)
		}
		if err := s.Validate(doc); err != nil {
			return fmt.Errorf("%w: %s", ErrInvalidMessage, validationText(err))
		}
	}
	return nil
}

// itemSchemas names the schema an item message must meet: its item type's
// own when it has one (which holds every constraint of the generic one,
// see TestItemTypeSchemasHoldTheGenericOne), else the generic one.
func itemSchemas(doc any) []string {
	c, err := loadContract()
	if err != nil {
		return []string{schemas.ItemMessage}
	}
	if fields, ok := doc.(map[string]any); ok {
		if itemType, ok := fields["itemType"].(string); ok {
			if own, ok := c.byItemType[itemType]; ok {
				return []string{own}
			}
		}
	}
	return []string{schemas.ItemMessage}
}

// validationText flattens a schema validation error to its leaf causes,
// each with the JSON pointer of the field.
func validationText(err error) string {
	ve, ok := err.(*jsonschema.ValidationError)
	if !ok {
		return err.Error()
	}
	out, _ := json.Marshal(ve.BasicOutput().Errors)
	var leaves []struct {
		InstanceLocation string `json:"instanceLocation"`
		Error            any    `json:"error"`
	}
	_ = json.Unmarshal(out, &leaves)
	var buf bytes.Buffer
	for _, l := range leaves {
		msg := fmt.Sprint(l.Error)
		if msg == "" || msg == "<nil>" {
			continue
		}
		loc := l.InstanceLocation
		if loc == "" {
			loc = "/"
		}
		if buf.Len() > 0 {
			buf.WriteString("; ")
		}
		fmt.Fprintf(&buf, "%s: %s", loc, msg)
	}
	if buf.Len() == 0 {
		return ve.Error()
	}
	return buf.String()
}
