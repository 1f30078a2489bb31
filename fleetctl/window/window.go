// Package window decides whether a site may be touched now: maintenance
// windows are written in the site's local wall-clock time, so a window at
// 02:00 stays at 02:00 across daylight-saving changes.
package window

import (
	"fmt"
	"strings"
	"sync"
	"time"
	_ "time/tzdata" // zones resolve the same on hosts without /usr/share/zoneinfo
)

// Window is one recurring maintenance window in site local time.
type Window struct {
	// Days the window starts on: mon, tue, wed, thu, fri, sat, sun. Empty means every day.
	Days []string `yaml:"days,omitempty" json:"days,omitempty"`
	// Start is the local start time, "HH:MM" (24 h clock).
	Start string `yaml:"start" json:"start"`
	// Duration is how long the window stays open, e.g. "4h" or "90m"; at most 24h.
	// A window may run past midnight into the next day.
	Duration string `yaml:"duration" json:"duration"`
}

var dayNames = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// compiled is a Window with its fields parsed.
type compiled struct {
	days     [7]bool
	hour     int
	minute   int
	duration time.Duration
}

// Validate reports the first malformed field, named so callers can prefix the entry.
func (w Window) Validate() error {
	_, err := w.compile()

	return err
}

func (w Window) compile() (compiled, error) {
	var c compiled

	if len(w.Days) == 0 {
		for i := range c.days {
			c.days[i] = true
		}
	}

	for _, d := range w.Days {
		wd, ok := dayNames[strings.ToLower(d)]
		if !ok {
			return c, fmt.Errorf("days: %q is not a day (want mon, tue, wed, thu, fri, sat or sun)", d)
		}

		c.days[wd] = true
	}

	if !strictHHMM(w.Start, &c.hour, &c.minute) {
		return c, fmt.Errorf("start: %q is not a time of day (want HH:MM, e.g. 02:30)", w.Start)
	}

	d, err := time.ParseDuration(w.Duration)
	if err != nil || d < time.Minute || d > 24*time.Hour {
		return c, fmt.Errorf("duration: %q is not a duration between 1m and 24h (e.g. 4h, 90m)", w.Duration)
	}

	c.duration = d

	return c, nil
}

// Schedule is the set of windows of one site, bound to its time zone.
type Schedule struct {
	loc     *time.Location
	windows []compiled
}

// NewSchedule parses the time zone (an IANA name such as Europe/Berlin) and
// the windows. No windows means the site may be touched at any time.
func NewSchedule(timeZone string, windows []Window) (*Schedule, error) {
	if timeZone == "Local" {
		// time.LoadLocation accepts it, but it names the zone of whatever
		// machine runs fleetctl, not the site's.
		return nil, fmt.Errorf("timezone: %q depends on the machine fleetctl runs on; name the site's IANA zone (e.g. Europe/Berlin, UTC)", timeZone)
	}

	loc, err := loadLocation(timeZone)
	if err != nil {
		return nil, fmt.Errorf("timezone: %q is not an IANA time zone (e.g. Europe/Berlin, UTC): %w", timeZone, err)
	}

	s := &Schedule{loc: loc}

	for i, w := range windows {
		c, err := w.compile()
		if err != nil {
			return nil, fmt.Errorf("windows[%d]: %w", i, err)
		}

		s.windows = append(s.windows, c)
	}

	return s, nil
}

// locations caches loaded zones by name. time.LoadLocation opens and
// parses the zone file on every call, and a rollout builds schedules for
// every site several times over (inventory validation, planning, the
// engine, staging): 100 reads of each zone per 30,000-node rollout. A
// *time.Location is immutable, so one per name serves the whole process.
// Only zones that loaded are kept: a bad name fails (with the same error)
// each time it is asked.
var locations sync.Map // name -> *time.Location

func loadLocation(name string) (*time.Location, error) {
	if l, ok := locations.Load(name); ok {
		return l.(*time.Location), nil
	}

	l, err := time.LoadLocation(name)
	if err != nil {
		return nil, err
	}

	actual, _ := locations.LoadOrStore(name, l)

	return actual.(*time.Location), nil
}

// Location is the site's time zone.
func (s *Schedule) Location() *time.Location { return s.loc }

// Always reports whether the site has no windows (open at all times).
func (s *Schedule) Always() bool { return len(s.windows) == 0 }

// starts returns the window start instants (in s.loc) whose start day is day.
func (s *Schedule) startOn(c compiled, day time.Time) (time.Time, bool) {
	if !c.days[day.Weekday()] {
		return time.Time{}, false
	}

	// time.Date normalises wall-clock times that DST skips, so a 02:30 start
	// on a spring-forward day still opens (at 03:30).
	return time.Date(day.Year(), day.Month(), day.Day(), c.hour, c.minute, 0, 0, s.loc), true
}

// endOn is when the window starting on day (at start) closes: its local wall-clock
// start plus its duration on the wall clock, not in elapsed time, so a
// 01:00+4h window ends at 05:00 also on the nights DST changes.
//
// A start the clock skips (02:30 on a spring-forward night) opens when the
// clock jumps and keeps its full length instead of shrinking to nothing.
func (s *Schedule) endOn(c compiled, day, start time.Time) time.Time {
	if h, m, _ := start.Clock(); h != c.hour || m != c.minute {
		return start.Add(c.duration)
	}

	return time.Date(day.Year(), day.Month(), day.Day(), c.hour, c.minute, int(c.duration/time.Second), 0, s.loc)
}

// OpenUntil reports whether t falls inside a window and, if so, when that window closes.
func (s *Schedule) OpenUntil(t time.Time) (bool, time.Time) {
	if s.Always() {
		return true, time.Time{}
	}

	local := t.In(s.loc)
	open := false

	var until time.Time

	// A window that started yesterday may still be open (it crosses midnight).
	for back := 1; back >= 0; back-- {
		day := local.AddDate(0, 0, -back)

		for _, c := range s.windows {
			start, ok := s.startOn(c, day)
			if !ok {
				continue
			}

			end := s.endOn(c, day, start)
			if !t.Before(start) && t.Before(end) {
				if !open || end.After(until) {
					until = end
				}

				open = true
			}
		}
	}

	return open, until
}

// Open reports whether t falls inside one of the windows.
func (s *Schedule) Open(t time.Time) bool {
	open, _ := s.OpenUntil(t)

	return open
}

// NextOpen returns t if a window is open at t, otherwise the start of the next window.
func (s *Schedule) NextOpen(t time.Time) time.Time {
	if s.Open(t) {
		return t
	}

	local := t.In(s.loc)

	var best time.Time

	for ahead := 0; ahead <= 8; ahead++ {
		day := local.AddDate(0, 0, ahead)

		for _, c := range s.windows {
			start, ok := s.startOn(c, day)
			if !ok || !start.After(t) {
				continue
			}

			if best.IsZero() || start.Before(best) {
				best = start
			}
		}

		if !best.IsZero() {
			return best
		}
	}

	return best
}

// strictHHMM parses exactly two digits, a colon and two digits (Sscanf's %d
// accepted "02:5x" as 02:05 and signs).
func strictHHMM(s string, hour, minute *int) bool {
	if len(s) != 5 || s[2] != ':' {
		return false
	}

	for _, i := range []int{0, 1, 3, 4} {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}

	*hour = int(s[0]-'0')*10 + int(s[1]-'0')
	*minute = int(s[3]-'0')*10 + int(s[4]-'0')

	return *hour <= 23 && *minute <= 59
}
