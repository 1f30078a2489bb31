package mirror

import (
	"encoding/json"
	"net/http"
)

func writeJSON(w http.ResponseWriter, v any) {
	json.NewEncoder(w).Encode(v) //nolint:errcheck,errchkjson
}

// regError writes an error in the registry API's format.
func regError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)

	type e struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}

	writeJSON(w, struct {
		Errors []e `json:"errors"`
	}{[]e{{code, msg}}})
}
