package overview

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

// dist is the built front end (web/, `npm run build`). It is committed, so a
// fresh clone builds without Node.js; CI rebuilds it from the lock file and
// fails if it differs (hack/check-overview-dist.sh).
//
//go:embed all:dist
var dist embed.FS

func staticHandler() http.Handler {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		panic(err) // the embed directive guarantees dist exists
	}

	files := http.FileServerFS(sub)

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Hashed asset names never change content: cache them; index.html never.
		if strings.HasPrefix(r.URL.Path, "/assets/") {
			w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			w.Header().Set("Cache-Control", "no-store")
			r.URL.Path = "/"
		}

		files.ServeHTTP(w, r)
	})
}
