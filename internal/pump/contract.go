package pump

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/datapump/datapump/docs/schemas"
)

// MaxBodyBytes bounds a message body; anything larger is refused.
const MaxBodyBytes = 64 << 10

// contract holds the compiled message schemas.
type contract struct {
	byName map[string]*jsonschema.Schema
}

var loadContract = sync.OnceValues(func() (*contract, error) {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	names, err := fs.Glob(schemas.Files, "*.json")
	if err != nil {
		return nil, err
	}
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
	}
	out := &contract{byName: map[string]*jsonschema.Schema{}}
	for _, name := range names {
		s, err := c.Compile(name)
		if err != nil {
			return nil, fmt.Errorf("compile schema %s: %w", name, err)
		}
		out.byName[name] = s
	}
	return out, nil
})

// validateBody checks a message body against the named schema file. The
// error names the offending field.
func validateBody(body []byte, schema string) error {
	if len(body) > MaxBodyBytes {
		return fmt.Errorf("%w: body: %d bytes exceeds the %d-byte limit", ErrInvalidMessage, len(body), MaxBodyBytes)
	}
	c, err := loadContract()
	if err != nil {
		return fmt.Errorf("load message schemas: %w", err)
	}
	s, ok := c.byName[schema]
	if !ok {
		return fmt.Errorf("no schema %s", schema)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: body is not JSON: %v", ErrInvalidMessage, err)
	}
	if err := s.Validate(doc); err != nil {
		return fmt.Errorf("%w: %s", ErrInvalidMessage, validationText(err))
	}
	return nil
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
