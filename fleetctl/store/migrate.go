package store

import (
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"slices"

	migrate "github.com/rubenv/sql-migrate"
)

// migrations are applied in file name order; a release that changes the
// store adds a file and never edits a shipped one.
//
//go:embed migrations/*.sql
var migrations embed.FS

const migrationTable = "fleetctl_migrations"

var migrationSet = migrate.MigrationSet{TableName: migrationTable}

func migrationSource() migrate.MigrationSource {
	return &migrate.EmbedFileSystemMigrationSource{FileSystem: migrations, Root: "migrations"}
}

// migrateUp applies the migrations this database lacks.
func migrateUp(db *sql.DB) error {
	_, err := migrationSet.Exec(db, "sqlite3", migrationSource(), migrate.Up)
	if err != nil {
		// Two processes opening a new database at once can both plan the
		// same migration; the loser finds it applied on the second try.
		_, err = migrationSet.Exec(db, "sqlite3", migrationSource(), migrate.Up)
	}

	if err != nil {
		return fmt.Errorf("applying migrations: %w", err)
	}

	return nil
}

// SchemaVersions lists the migrations this fleetctl knows, in order.
func SchemaVersions() []string {
	names, _ := fs.Glob(migrations, "migrations/*.sql")
	for i, n := range names {
		names[i] = n[len("migrations/"):]
	}

	slices.Sort(names)

	return names
}

// checkSchema refuses a database that lacks migrations this fleetctl needs
// (it cannot apply them read-only) or has migrations it does not know (a
// newer fleetctl wrote it).
func checkSchema(db *sql.DB) error {
	rows, err := db.Query(`SELECT id FROM ` + migrationTable)
	if err != nil {
		return fmt.Errorf("reading schema version: %w (not a fleetctl database, or written before schema versioning: run 'fleetctl rollout resume' or any writing command once)", err)
	}
	defer rows.Close() //nolint:errcheck

	applied := map[string]bool{}

	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return fmt.Errorf("reading schema version: %w", err)
		}

		applied[id] = true
	}

	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading schema version: %w", err)
	}

	known := SchemaVersions()
	for _, k := range known {
		if !applied[k] {
			return fmt.Errorf("schema lacks migration %s: open it once with a writing command (rollout resume) to update it", k)
		}

		delete(applied, k)
	}

	for id := range applied {
		return fmt.Errorf("schema has migration %s that this fleetctl does not know: use a newer fleetctl", id)
	}

	return nil
}
