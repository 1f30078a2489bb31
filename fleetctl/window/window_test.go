package window_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/labfleet/labfleet/fleetctl/window"
)

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()

	loc, err := time.LoadLocation(name)
	require.NoError(t, err)

	return loc
}

func TestOpen(t *testing.T) {
	berlin := mustLoc(t, "Europe/Berlin")

	for _, tc := range []struct {
		name    string
		windows []window.Window
		at      time.Time
		open    bool
		next    time.Time // expected NextOpen when closed
	}{
		{
			name: "no windows is always open", at: time.Date(2026, 1, 1, 12, 0, 0, 0, berlin), open: true,
		},
		{
			name:    "inside a daily window",
			windows: []window.Window{{Start: "02:00", Duration: "4h"}},
			at:      time.Date(2026, 1, 7, 3, 0, 0, 0, berlin), open: true,
		},
		{
			name:    "end is exclusive",
			windows: []window.Window{{Start: "02:00", Duration: "4h"}},
			at:      time.Date(2026, 1, 7, 6, 0, 0, 0, berlin),
			next:    time.Date(2026, 1, 8, 2, 0, 0, 0, berlin),
		},
		{
			name:    "local time, not UTC: 02:30 Berlin is 01:30 UTC in winter",
			windows: []window.Window{{Start: "02:00", Duration: "1h"}},
			at:      time.Date(2026, 1, 7, 1, 30, 0, 0, time.UTC), open: true,
		},
		{
			name:    "same window in summer time: 02:30 CEST is 00:30 UTC",
			windows: []window.Window{{Start: "02:00", Duration: "1h"}},
			at:      time.Date(2026, 7, 7, 0, 30, 0, 0, time.UTC), open: true,
		},
		{
			name:    "window crossing midnight is open after midnight",
			windows: []window.Window{{Days: []string{"sat"}, Start: "22:00", Duration: "6h"}},
			at:      time.Date(2026, 1, 4, 1, 0, 0, 0, berlin), open: true, // Sunday 01:00
		},
		{
			name:    "day filter: closed on a weekday, next is Saturday",
			windows: []window.Window{{Days: []string{"sat", "sun"}, Start: "01:00", Duration: "2h"}},
			at:      time.Date(2026, 1, 7, 1, 30, 0, 0, berlin), // Wednesday
			next:    time.Date(2026, 1, 10, 1, 0, 0, 0, berlin),
		},
		{
			name:    "earliest of several windows",
			windows: []window.Window{{Start: "23:00", Duration: "1h"}, {Start: "13:00", Duration: "1h"}},
			at:      time.Date(2026, 1, 7, 12, 0, 0, 0, berlin),
			next:    time.Date(2026, 1, 7, 13, 0, 0, 0, berlin),
		},
		{
			name:    "spring forward: a 02:30 start that does not exist still opens",
			windows: []window.Window{{Start: "02:30", Duration: "1h"}},
			at:      time.Date(2026, 3, 29, 3, 45, 0, 0, berlin), open: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := window.NewSchedule("Europe/Berlin", tc.windows)
			require.NoError(t, err)

			assert.Equal(t, tc.open, s.Open(tc.at))

			if tc.open {
				assert.Equal(t, tc.at, s.NextOpen(tc.at))
			} else {
				assert.True(t, tc.next.Equal(s.NextOpen(tc.at)), "next open %s, want %s", s.NextOpen(tc.at), tc.next)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		w     window.Window
		field string
	}{
		{window.Window{Start: "2:00", Duration: "1h"}, "start"},
		{window.Window{Start: "24:00", Duration: "1h"}, "start"},
		{window.Window{Start: "02:00", Duration: "25h"}, "duration"},
		{window.Window{Start: "02:00", Duration: "soon"}, "duration"},
		{window.Window{Days: []string{"funday"}, Start: "02:00", Duration: "1h"}, "days"},
		{window.Window{Start: "02:00", Duration: "1h"}, ""},
	} {
		err := tc.w.Validate()
		if tc.field == "" {
			assert.NoError(t, err)

			continue
		}

		require.Error(t, err)
		assert.Contains(t, err.Error(), tc.field+":")
	}

	_, err := window.NewSchedule("Mars/Olympus", nil)
	require.ErrorContains(t, err, "timezone")
}

func BenchmarkOpen(b *testing.B) {
	s, err := window.NewSchedule("America/New_York", []window.Window{{Days: []string{"sat", "sun"}, Start: "01:00", Duration: "3h"}})
	require.NoError(b, err)

	at := time.Date(2026, 1, 7, 12, 0, 0, 0, time.UTC)

	for b.Loop() {
		s.Open(at)
	}
}

// Finding 10 of issue 13: "02:5x" was read as 02:05, durations of 1ns
// passed although the message says 1m-24h, and "Local" (the zone of
// whatever machine runs fleetctl) was accepted.
func TestValidationIsStrict(t *testing.T) {
	for _, tc := range []struct {
		zone string
		w    window.Window
		want string
	}{
		{"UTC", window.Window{Start: "02:5x", Duration: "1h"}, `start: "02:5x" is not a time of day`},
		{"UTC", window.Window{Start: "2:050", Duration: "1h"}, `start: "2:050" is not a time of day`},
		{"UTC", window.Window{Start: "+2:05", Duration: "1h"}, `start: "+2:05" is not a time of day`},
		{"UTC", window.Window{Start: "02:00", Duration: "1ns"}, `duration: "1ns" is not a duration between 1m and 24h`},
		{"UTC", window.Window{Start: "02:00", Duration: "59s"}, `duration: "59s" is not a duration between 1m and 24h`},
		{"Local", window.Window{Start: "02:00", Duration: "1h"}, `timezone: "Local" depends on the machine fleetctl runs on`},
	} {
		_, err := window.NewSchedule(tc.zone, []window.Window{tc.w})
		require.Error(t, err, "%+v", tc)
		assert.Contains(t, err.Error(), tc.want)
	}

	_, err := window.NewSchedule("Europe/Berlin", []window.Window{{Start: "23:59", Duration: "1m"}})
	require.NoError(t, err)
}

// Finding 4 of issue 13: window length was counted in elapsed time, so on
// the spring-forward night a Berlin 01:00+4h window stayed open until 06:00
// CEST and a Sunday 00:00+24h window ran into Monday. Windows end at the
// local wall-clock time start+duration.
func TestWindowsEndOnWallClockAcrossDST(t *testing.T) {
	berlin := mustLoc(t, "Europe/Berlin")

	night, err := window.NewSchedule("Europe/Berlin", []window.Window{{Start: "01:00", Duration: "4h"}})
	require.NoError(t, err)

	// 2026-03-29: clocks go from 02:00 CET to 03:00 CEST.
	open, until := night.OpenUntil(time.Date(2026, 3, 29, 4, 30, 0, 0, berlin))
	assert.True(t, open)
	assert.Equal(t, time.Date(2026, 3, 29, 5, 0, 0, 0, berlin), until.In(berlin))
	assert.False(t, night.Open(time.Date(2026, 3, 29, 5, 30, 0, 0, berlin)), "closed at 05:30 CEST")

	// 2026-10-25: clocks go from 03:00 CEST back to 02:00 CET; the window still ends at 05:00 local.
	_, until = night.OpenUntil(time.Date(2026, 10, 25, 4, 30, 0, 0, berlin))
	assert.Equal(t, time.Date(2026, 10, 25, 5, 0, 0, 0, berlin), until.In(berlin))

	sunday, err := window.NewSchedule("Europe/Berlin", []window.Window{{Days: []string{"sun"}, Start: "00:00", Duration: "24h"}})
	require.NoError(t, err)
	assert.True(t, sunday.Open(time.Date(2026, 3, 29, 23, 30, 0, 0, berlin)))
	assert.False(t, sunday.Open(time.Date(2026, 3, 30, 0, 30, 0, 0, berlin)), "Monday 00:30 is not Sunday")
	assert.True(t, sunday.Open(time.Date(2026, 10, 25, 23, 30, 0, 0, berlin)), "the 25-hour Sunday is open to its end")
}

// Each zone is loaded once per process: time.LoadLocation opens and parses
// the zone file on every call, and a 30,000-node rollout asked for each of
// its zones about 100 times. A bad zone fails with the same text each time.
func TestZonesLoadOncePerProcess(t *testing.T) {
	a, err := window.NewSchedule("Asia/Kolkata", nil)
	require.NoError(t, err)

	b, err := window.NewSchedule("Asia/Kolkata", []window.Window{{Start: "02:00", Duration: "1h"}})
	require.NoError(t, err)

	assert.Same(t, a.Location(), b.Location(), "the second schedule reuses the loaded zone")
	assert.Equal(t, "Asia/Kolkata", b.Location().String())

	_, err1 := window.NewSchedule("Mars/Olympus", nil)
	_, err2 := window.NewSchedule("Mars/Olympus", nil)

	require.Error(t, err1)
	assert.Equal(t, err1.Error(), err2.Error(), "a bad zone is refused the same way every time")
	assert.Contains(t, err2.Error(), `timezone: "Mars/Olympus" is not an IANA time zone`)
}
