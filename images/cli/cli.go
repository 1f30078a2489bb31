// Package cli holds what imagectl's verbs share: output modes and the error
// type that maps to the "bad input" exit code.
package cli

import (
	"encoding/json"
	"fmt"
	"io"
)

// UsageError marks an error caused by bad input (flags, definition, keys):
// imagectl exits 2 for it.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// BadInput wraps err as a UsageError.
func BadInput(err error) error {
	if err == nil {
		return nil
	}

	return &UsageError{Err: err}
}

// Output formats accepted by -o.
const (
	OutputText = "text"
	OutputJSON = "json"
)

// CheckOutput validates an -o value.
func CheckOutput(o string) error {
	if o != OutputText && o != OutputJSON {
		return BadInput(fmt.Errorf("-o %q: allowed values are %q and %q", o, OutputText, OutputJSON))
	}

	return nil
}

// WriteJSON writes v as indented JSON.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")

	return enc.Encode(v)
}
