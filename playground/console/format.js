// How figures and times read in tables.

const number = new Intl.NumberFormat(undefined);

export function count(n) {
  return n === null || n === undefined ? '—' : number.format(n);
}

/** Milliseconds as "850 ms", "12.4 s", "3 min 5 s" or "2 h 10 min". */
export function duration(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  const s = Math.round(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

const dateTime = new Intl.DateTimeFormat(undefined, {
  year: 'numeric',
  month: '2-digit',
  day: '2-digit',
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
});

/** An RFC 3339 instant in the browser's time zone. */
export function instant(value) {
  return value ? dateTime.format(new Date(value)) : '—';
}

/** The last part of a UUID, enough to tell rows apart (the first part of
 * the time-ordered ids the server makes is their time, shared by
 * neighbours). */
export function shortId(id) {
  return id ? `…${id.slice(-8)}` : '—';
}

/** The browser's IANA time zone. */
export function localZone() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
}

/** One CSV line (RFC 4180 quoting). */
export function csvLine(cells) {
  return `${cells
    .map((c) => {
      const s = c === null || c === undefined ? '' : String(c);
      return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
    })
    .join(',')}\n`;
}
