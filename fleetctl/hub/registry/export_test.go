package registry

import "database/sql"

// DBForTest exposes the database to assert what is (not) stored.
func (r *Registry) DBForTest() *sql.DB { return r.db }
