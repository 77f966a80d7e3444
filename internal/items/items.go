// Package items is the registry of item types: for each, the topic its
// messages go to, where its rows live in the shard database, how it is
// enriched from related rows, and how it is mapped into the CIS payload.
//
// Payment and paperless registration are built in; a new type is
// configuration (Source, topic, CIS path) plus, at most, one MapFunc.
package items

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/datapump/datapump/internal/store"
)

// MapFunc turns the enrichment row (column name → value) into the JSON
// payload sent to the CIS. It returns an error for invalid data, which fails
// the item permanently.
type MapFunc func(row map[string]any) (any, error)

// Type is one item type.
type Type struct {
	// Name is the registry name, used in MessageIDs ("payment").
	Name string
	// Topic is the bus topic its item messages go to.
	Topic string
	// Source maps the type onto the application's table and enrichment query.
	Source store.Source
	// CISPath is appended to the biller's CIS base URL ("/payments").
	CISPath string
	// Map builds the CIS payload from the enrichment row.
	Map MapFunc
}

var namePattern = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

// Validate checks the type and names the bad field.
func (t Type) Validate() error {
	if !namePattern.MatchString(t.Name) {
		return fmt.Errorf("name: %q must match %s", t.Name, namePattern)
	}
	if t.Topic == "" {
		return fmt.Errorf("item type %s: topic: required", t.Name)
	}
	if !strings.HasPrefix(t.CISPath, "/") {
		return fmt.Errorf("item type %s: cis_path: %q must start with /", t.Name, t.CISPath)
	}
	if t.Map == nil {
		return fmt.Errorf("item type %s: mapping: required", t.Name)
	}
	if t.Source.ItemType != t.Name {
		return fmt.Errorf("item type %s: source item type %q does not match", t.Name, t.Source.ItemType)
	}
	if err := t.Source.Validate(); err != nil {
		return fmt.Errorf("item type %s: source: %w", t.Name, err)
	}
	return nil
}

// ErrUnknown is returned for an item type or topic the registry lacks.
var ErrUnknown = errors.New("unknown item type")

// Registry holds the configured item types.
type Registry struct {
	byName  map[string]Type
	byTopic map[string]Type
	names   []string
}

// NewRegistry validates the types and indexes them by name and topic.
func NewRegistry(types ...Type) (*Registry, error) {
	r := &Registry{byName: map[string]Type{}, byTopic: map[string]Type{}}
	for _, t := range types {
		if err := t.Validate(); err != nil {
			return nil, err
		}
		if _, dup := r.byName[t.Name]; dup {
			return nil, fmt.Errorf("item type %s: defined twice", t.Name)
		}
		if other, dup := r.byTopic[t.Topic]; dup {
			return nil, fmt.Errorf("item type %s: topic %s already used by %s", t.Name, t.Topic, other.Name)
		}
		r.byName[t.Name] = t
		r.byTopic[t.Topic] = t
		r.names = append(r.names, t.Name)
	}
	sort.Strings(r.names)
	return r, nil
}

// Get returns the type named name.
func (r *Registry) Get(name string) (Type, error) {
	t, ok := r.byName[name]
	if !ok {
		return Type{}, fmt.Errorf("%w: %q", ErrUnknown, name)
	}
	return t, nil
}

// ByTopic returns the type whose messages go to topic.
func (r *Registry) ByTopic(topic string) (Type, error) {
	t, ok := r.byTopic[topic]
	if !ok {
		return Type{}, fmt.Errorf("%w: no item type for topic %q", ErrUnknown, topic)
	}
	return t, nil
}

// Types returns every type, ordered by name.
func (r *Registry) Types() []Type {
	out := make([]Type, 0, len(r.names))
	for _, n := range r.names {
		out = append(out, r.byName[n])
	}
	return out
}

// Sources returns the source mappings of every type, for the store adapters.
func (r *Registry) Sources() []store.Source {
	out := make([]store.Source, 0, len(r.names))
	for _, t := range r.Types() {
		out = append(out, t.Source)
	}
	return out
}
