/* SPDX-License-Identifier: MIT */
/*
 * plot.c - precopy plot EVENTS.jsonl OUT.svg: the timeline of a migration
 * from the --json events of migrate, incoming or demo, drawn as SVG.
 *
 * The figure has three panels over time: what is left to send, the rates
 * (both bandwidth figures and the dirty rate), and the vCPU throttle; for
 * a destination-only log, what was received, the receive rate and the
 * pass. Phases are shaded, pass boundaries dotted. Legends sit above each
 * panel, outside the plotting area, so they never cover data.
 */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define W 900
#define H 900
#define PL 78.0   /* plot area, left */
#define PR 880.0  /* plot area, right */
#define FONT "DejaVu Sans, Liberation Sans, Arial, sans-serif"
#define CHAR_W 6.4 /* width of one character at 11 px, roughly */

struct row {
	double t;                /* s */
	double remaining, transferred, busy, wall, dirty, throttle, total, downtime;
	int status;
	unsigned iteration;
	bool result;
};

struct rows {
	struct row *v;
	size_t n, cap;
	unsigned migrations; /* seen in the file; the last is kept */
};

/* --- reading ------------------------------------------------------------- */

static const char *json_find(const char *line, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(line, pat);
	return p ? p + strlen(pat) : NULL;
}

static bool json_num(const char *line, const char *key, double *out)
{
	const char *p = json_find(line, key);
	char *end;
	double v;

	if (!p)
		return false;
	v = strtod(p, &end);
	if (end == p || !isfinite(v))
		return false;
	*out = v;
	return true;
}

static bool json_str(const char *line, const char *key, char *buf, size_t len)
{
	const char *p = json_find(line, key);
	size_t n = 0;

	if (!p || *p != '"' || !len)
		return false;
	for (p++; *p && *p != '"' && n + 1 < len; p++)
		buf[n++] = *p;
	buf[n] = '\0';
	return *p == '"';
}

static int status_of(const char *name)
{
	for (int i = PRECOPY_STATUS_NONE; i <= PRECOPY_STATUS_CANCELLED; i++)
		if (!strcmp(name, precopy_status_name((enum precopy_status)i)))
			return i;
	return -1;
}

static int push(struct rows *r, const struct row *x)
{
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 256;
		struct row *v = realloc(r->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		r->v = v;
		r->cap = cap;
	}
	r->v[r->n++] = *x;
	return 0;
}

/* One event line into @r (source or destination rows); others are skipped. */
static int take(struct rows *src, struct rows *dst, const char *line)
{
	char ev[32], role[32] = "source", st[32];
	struct row x = { 0 };
	struct rows *r;
	double v;

	if (!json_str(line, "event", ev, sizeof(ev)) ||
	    (strcmp(ev, "progress") && strcmp(ev, "result")))
		return 0;
	json_str(line, "role", role, sizeof(role));
	r = !strcmp(role, "destination") ? dst : src;
	if (!json_str(line, "status", st, sizeof(st)) || (x.status = status_of(st)) < 0 ||
	    !json_num(line, "total-time", &v))
		return 0;
	x.t = v / 1e3;
	x.result = !strcmp(ev, "result");
	json_num(line, "remaining", &x.remaining);
	json_num(line, "transferred", &x.transferred);
	/* the bandwidth the switchover decision uses; older event files,
	 * and simulate's, have only the busy-time figure */
	if (!json_num(line, "bandwidth-switchover", &x.busy))
		json_num(line, "bandwidth-busy", &x.busy);
	json_num(line, "bandwidth-wall", &x.wall);
	json_num(line, "total", &x.total);
	json_num(line, "downtime", &x.downtime);
	if (json_num(line, "dirty-pages-rate", &v))
		x.dirty = v * PRECOPY_PAGE_SIZE;
	json_num(line, "cpu-throttle-percentage", &x.throttle);
	if (json_num(line, "iteration", &v) && v >= 0 && v < 1e9)
		x.iteration = (unsigned)v;
	/* A new migration (--then-migrate-to, or two runs in one file):
	 * the clock went back, or the last one ended. Keep the last. */
	if (r->n && (r->v[r->n - 1].result || x.t < r->v[r->n - 1].t)) {
		r->n = 0;
		r->migrations++;
	}
	if (!r->n && !r->migrations)
		r->migrations = 1;
	return push(r, &x);
}

/* --- drawing ------------------------------------------------------------- */

struct axis {
	double lo, hi, step;
	bool log; /* decades from lo to hi (powers of ten) */
};

/* 0..max in steps of 1, 2 or 5 times a power of ten, about @n of them. */
static struct axis nice_axis_n(double max, double n)
{
	struct axis a = { 0, 1, 0.2, false };
	double raw, mag, norm;

	if (!(max > 0) || !isfinite(max))
		return a;
	raw = max / n;
	mag = pow(10, floor(log10(raw)));
	norm = raw / mag;
	a.step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
	a.hi = ceil(max / a.step - 1e-9) * a.step;
	if (a.hi < max * 1.02)
		a.hi += a.step; /* headroom: the top line is not on the frame */
	return a;
}

static struct axis nice_axis(double max)
{
	return nice_axis_n(max, 5);
}

/*
 * Rates that differ by more than 20x (the two bandwidth figures often do)
 * get decades, so that the lower line is not flattened onto the axis.
 * @lo, @hi: the smallest and largest positive values to show.
 */
static struct axis rate_axis(double lo, double hi)
{
	struct axis a;

	if (!(lo > 0) || !(hi > 20 * lo))
		return nice_axis(hi);
	if (lo < hi / 1e4)
		lo = hi / 1e4; /* below that, nothing a person reads */
	a.lo = pow(10, floor(log10(lo)));
	a.hi = pow(10, ceil(log10(hi * 1.02)));
	a.step = 10;
	a.log = true;
	return a;
}

static void fmt_num(double v, double step, char *buf, size_t len)
{
	int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);

	snprintf(buf, len, "%.*f", dec > 6 ? 6 : dec, v);
}

struct panel {
	double top, bottom; /* plot area */
	double head;        /* top of the legend rows */
	struct axis y;
	double legend_x;    /* where the next legend entry goes */
	double legend_y;
};

struct fig {
	FILE *f;
	double tmax;
	struct axis x;
};

static double px(const struct fig *g, double t)
{
	return PL + (PR - PL) * (t - g->x.lo) / (g->x.hi - g->x.lo);
}

static double py(const struct panel *p, double v)
{
	double frac = p->y.log ? (v > 0 ? log10(v / p->y.lo) / log10(p->y.hi / p->y.lo) : -1)
			       : (v - p->y.lo) / (p->y.hi - p->y.lo);
	double y = p->bottom - (p->bottom - p->top) * frac;

	return y < p->top ? p->top : y > p->bottom ? p->bottom : y;
}

static void text(FILE *f, double x, double y, const char *anchor, int size, const char *s)
{
	fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\" font-size=\"%d\">", x, y,
		anchor, size);
	for (; *s; s++) {
		if (*s == '<')
			fputs("&lt;", f);
		else if (*s == '>')
			fputs("&gt;", f);
		else if (*s == '&')
			fputs("&amp;", f);
		else
			fputc(*s, f);
	}
	fputs("</text>\n", f);
}

/* A legend entry above the panel: a swatch (dashed if @dash) and a label;
 * no swatch if @color is NULL. Wraps to a second row when the first is full. */
static void legend(struct fig *g, struct panel *p, const char *color, bool dash, const char *label)
{
	double wdt = (color ? 28 : 0) + strlen(label) * CHAR_W;

	if (p->legend_x > PL && p->legend_x + wdt > PR) {
		p->legend_x = PL;
		p->legend_y += 15;
	}
	if (color) {
		fprintf(g->f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
			"stroke-width=\"2.5\"%s/>\n", p->legend_x, p->legend_y - 4, p->legend_x + 22,
			p->legend_y - 4, color, dash ? " stroke-dasharray=\"6,3\"" : "");
		p->legend_x += 28;
	}
	text(g->f, p->legend_x, p->legend_y, "start", 11, label);
	p->legend_x += strlen(label) * CHAR_W + 22;
}

static void frame(struct fig *g, struct panel *p, const char *ylabel)
{
	FILE *f = g->f;
	char b[32];

	fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
		"stroke=\"#333\" stroke-width=\"1\"/>\n", PL, p->top, PR - PL, p->bottom - p->top);
	for (double v = p->y.lo; !p->y.log && v <= p->y.hi + p->y.step / 2; v += p->y.step) {
		double y = py(p, v);

		fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n",
			PL, y, PR, y);
		fmt_num(v, p->y.step, b, sizeof(b));
		text(f, PL - 6, y + 4, "end", 11, b);
	}
	for (double v = p->y.lo; p->y.log && v <= p->y.hi * 1.001; v *= 10) {
		double y = py(p, v);

		fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ccc\"/>\n",
			PL, y, PR, y);
		snprintf(b, sizeof(b), "%g", v);
		text(f, PL - 6, y + 4, "end", 11, b);
		for (int m = 2; m <= 5 && v * 10 <= p->y.hi * 1.001; m += 3)
			fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
				"stroke=\"#eee\"/>\n", PL, py(p, v * m), PR, py(p, v * m));
	}
	for (double t = g->x.lo; t <= g->x.hi + g->x.step / 2; t += g->x.step) {
		double x = px(g, t);

		fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n",
			x, p->top, x, p->bottom);
		fmt_num(t, g->x.step, b, sizeof(b));
		text(f, x, p->bottom + 14, "middle", 11, b);
	}
	fprintf(f, "<text x=\"18\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"12\" "
		"transform=\"rotate(-90 18 %.1f)\">%s</text>\n", (p->top + p->bottom) / 2,
		(p->top + p->bottom) / 2, ylabel);
}

/* Phases shaded, pass boundaries dotted, inside the plot area. */
static const char *phase_color(int status)
{
	switch (status) {
	case PRECOPY_STATUS_SETUP: return "#ececec";
	case PRECOPY_STATUS_BULK: return "#e6f0fa";
	case PRECOPY_STATUS_SWITCHOVER: return "#fbe3e3";
	default: return NULL;
	}
}

static void phases(struct fig *g, const struct panel *p, const struct rows *r)
{
	unsigned passes = 0;

	for (size_t i = 1; i < r->n; i++)
		passes += r->v[i].iteration != r->v[i - 1].iteration;
	for (size_t i = 0; i + 1 < r->n;) {
		const char *c = phase_color(r->v[i].status);
		size_t j = i + 1;
		double x0, x1;

		/* one rectangle per phase: adjacent ones would leave seams */
		while (j + 1 < r->n && r->v[j].status == r->v[i].status)
			j++;
		x0 = px(g, r->v[i].t);
		x1 = px(g, r->v[j].t);
		if (c && x1 > x0)
			fprintf(g->f, "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" "
				"fill=\"%s\"/>\n", x0, p->top, x1 - x0, p->bottom - p->top, c);
		i = j;
	}
	if (passes > 60)
		return; /* a comb of lines would hide the data */
	for (size_t i = 1; i < r->n; i++)
		if (r->v[i].status == PRECOPY_STATUS_ITERATE &&
		    r->v[i].iteration != r->v[i - 1].iteration) {
			double x = px(g, r->v[i].t);

			fprintf(g->f, "<line x1=\"%.2f\" y1=\"%.1f\" x2=\"%.2f\" y2=\"%.1f\" "
				"stroke=\"#999\" stroke-dasharray=\"2,3\"/>\n", x, p->top, x,
				p->bottom);
		}
}

/* A series: the field at @off of each row, times @scale; @step draws
 * steps (a value holds until the next). */
static void series(struct fig *g, const struct panel *p, const struct rows *r, size_t off,
		   double scale, bool step, const char *color, double width, bool dash)
{
	double prev_y = 0;

	if (!r->n)
		return;
	fprintf(g->f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%.1f\" "
		"stroke-linejoin=\"round\"%s points=\"", color, width,
		dash ? " stroke-dasharray=\"6,3\"" : "");
	for (size_t i = 0; i < r->n; i++) {
		double v = *(const double *)((const char *)&r->v[i] + off) * scale;
		double x = px(g, r->v[i].t), y = py(p, v);

		if (step && i)
			fprintf(g->f, "%.1f,%.1f ", x, prev_y);
		fprintf(g->f, "%.1f,%.1f ", x, y);
		prev_y = y;
	}
	fputs("\"/>\n", g->f);
}

/* The smallest positive value during the passes (bulk and later). */
static double min_pos(const struct rows *r, size_t off, double scale)
{
	double m = INFINITY;

	for (size_t i = 0; i < r->n; i++) {
		double v = *(const double *)((const char *)&r->v[i] + off) * scale;

		if ((r->v[i].status == PRECOPY_STATUS_BULK ||
		     r->v[i].status == PRECOPY_STATUS_ITERATE) && v > 0 && v < m)
			m = v;
	}
	return isfinite(m) ? m : 0;
}

static double max_of(const struct rows *r, size_t off, double scale)
{
	double m = 0;

	for (size_t i = 0; i < r->n; i++) {
		double v = *(const double *)((const char *)&r->v[i] + off) * scale;

		if (v > m)
			m = v;
	}
	return m;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* busy / wall over the rows where both were measured during the passes. */
static bool bw_ratio(const struct rows *r, double *median, double *max)
{
	double *v = malloc((r->n ? r->n : 1) * sizeof(*v));
	size_t n = 0;

	if (!v)
		return false;
	for (size_t i = 0; i < r->n; i++)
		if ((r->v[i].status == PRECOPY_STATUS_BULK ||
		     r->v[i].status == PRECOPY_STATUS_ITERATE) &&
		    r->v[i].busy > 0 && r->v[i].wall > 0)
			v[n++] = r->v[i].busy / r->v[i].wall;
	if (n) {
		qsort(v, n, sizeof(*v), cmp_double);
		*median = v[n / 2];
		*max = v[n - 1];
	}
	free(v);
	return n > 0;
}

#define MIB (1024.0 * 1024.0)
#define OFF(f) offsetof(struct row, f)

/* What the shading means, under the title. */
static void draw_key(FILE *f)
{
	static const struct { int st; const char *label; } ph[] = {
		{ PRECOPY_STATUS_SETUP, "setup" },
		{ PRECOPY_STATUS_BULK, "bulk pass" },
		{ PRECOPY_STATUS_SWITCHOVER, "switchover (guest stopped)" },
	};
	struct panel k = { .legend_x = PL, .legend_y = 54 };

	for (size_t i = 0; i < sizeof(ph) / sizeof(ph[0]); i++) {
		fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"18\" height=\"10\" fill=\"%s\" "
			"stroke=\"#bbb\"/>\n", k.legend_x, k.legend_y - 9, phase_color(ph[i].st));
		k.legend_x += 24;
		text(f, k.legend_x, k.legend_y, "start", 11, ph[i].label);
		k.legend_x += strlen(ph[i].label) * CHAR_W + 22;
	}
	fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#999\" "
		"stroke-dasharray=\"2,3\"/>\n", k.legend_x, k.legend_y - 4, k.legend_x + 22,
		k.legend_y - 4);
	text(f, k.legend_x + 28, k.legend_y, "start", 11,
	     "a later pass begins (not drawn past 60)");
}

/* The SVG's head: title, what was migrated and how it ended, and the key
 * to the phase shading. */
static void draw_head(FILE *f, const struct rows *r, bool source, const char *name)
{
	const struct row *last = &r->v[r->n - 1];
	char b[256], c[64];

	fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
		"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
		"viewBox=\"0 0 %d %d\" font-family=\"%s\">\n"
		"<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"white\"/>\n",
		W, H, W, H, FONT, W, H);
	snprintf(b, sizeof(b), "Migration timeline, %s (%s)", source ? "source" : "destination",
		 name);
	text(f, W / 2.0, 20, "middle", 14, b);
	snprintf(b, sizeof(b), "%s of RAM, %s at %.2f s, %u pass%s after bulk",
		 pc_cli_fmt_bytes(last->total, c, sizeof(c)),
		 precopy_status_name((enum precopy_status)last->status), last->t, last->iteration,
		 last->iteration == 1 ? "" : "es");
	if (last->status == PRECOPY_STATUS_COMPLETED && source)
		snprintf(b + strlen(b), sizeof(b) - strlen(b), ", downtime %.0f ms", last->downtime);
	if (r->migrations > 1)
		snprintf(b + strlen(b), sizeof(b) - strlen(b), " (the last of %u migrations)",
			 r->migrations);
	text(f, W / 2.0, 38, "middle", 11, b);
	draw_key(f);
}

/* The y axes of the three panels. */
static void set_axes(struct panel p[3], const struct rows *r, bool source)
{
	if (source) {
		double top = max_of(r, OFF(busy), 1 / MIB);

		if (max_of(r, OFF(wall), 1 / MIB) > top)
			top = max_of(r, OFF(wall), 1 / MIB);
		if (max_of(r, OFF(dirty), 1 / MIB) > top)
			top = max_of(r, OFF(dirty), 1 / MIB);
		double low = min_pos(r, OFF(busy), 1 / MIB);

		if (min_pos(r, OFF(wall), 1 / MIB) > 0 &&
		    (!(low > 0) || min_pos(r, OFF(wall), 1 / MIB) < low))
			low = min_pos(r, OFF(wall), 1 / MIB);
		p[0].y = nice_axis(max_of(r, OFF(remaining), 1 / MIB));
		p[1].y = rate_axis(low, top);
		p[2].y = (struct axis){ 0, 100, 20, false };
	} else {
		p[0].y = nice_axis(max_of(r, OFF(transferred), 1 / MIB));
		p[1].y = nice_axis(max_of(r, OFF(wall), 1 / MIB));
		p[2].y = nice_axis(max_of(r, OFF(throttle), 1));
		if (p[2].y.step < 1) {
			p[2].y.step = 1;
			p[2].y.hi = ceil(p[2].y.hi) < 1 ? 1 : ceil(p[2].y.hi);
		}
	}
}

/* Source: what is left, the bandwidths and dirty rate, the throttle. */
static void draw_source(struct fig *g, struct panel p[3], const struct rows *r)
{
	double med = 0, mx = 0;
	char b[256];

	legend(g, &p[0], "#6a3d9a", false, "remaining: dirty RAM not yet sent (MiB)");
	frame(g, &p[0], "MiB");
	series(g, &p[0], r, OFF(remaining), 1 / MIB, false, "#6a3d9a", 2, false);

	legend(g, &p[1], "#1f78b4", false,
	       "bandwidth the switchover decision uses: what the link can carry");
	legend(g, &p[1], "#33a02c", false, "bandwidth from wall time: what was sent");
	legend(g, &p[1], "#e66101", true, "dirty rate over the last pass");
	if (bw_ratio(r, &med, &mx))
		snprintf(b, sizeof(b), "decision/wall: median %.1fx, largest %.1fx", med, mx);
	else
		snprintf(b, sizeof(b), "decision/wall: no sample with both while sending");
	legend(g, &p[1], NULL, false, b);
	frame(g, &p[1], p[1].y.log ? "MiB/s (log scale)" : "MiB/s");
	series(g, &p[1], r, OFF(wall), 1 / MIB, false, "#33a02c", 2.6, false);
	series(g, &p[1], r, OFF(busy), 1 / MIB, false, "#1f78b4", 1.4, false);
	series(g, &p[1], r, OFF(dirty), 1 / MIB, true, "#e66101", 1.6, true);

	legend(g, &p[2], "#333", false, "vCPU throttle (auto-converge), percent of CPU time taken");
	frame(g, &p[2], "throttle (%)");
	series(g, &p[2], r, OFF(throttle), 1, true, "#333", 2, false);
}

/* Destination: what was received, its rate, the passes acknowledged. */
static void draw_dest(struct fig *g, struct panel p[3], const struct rows *r)
{
	legend(g, &p[0], "#6a3d9a", false, "received: bytes taken off the transport (MiB)");
	frame(g, &p[0], "MiB");
	series(g, &p[0], r, OFF(transferred), 1 / MIB, false, "#6a3d9a", 2, false);
	legend(g, &p[1], "#33a02c", false, "receive rate between two events (MiB/s)");
	frame(g, &p[1], p[1].y.log ? "MiB/s (log scale)" : "MiB/s");
	series(g, &p[1], r, OFF(wall), 1 / MIB, true, "#33a02c", 1.6, false);
	legend(g, &p[2], "#333", false, "passes acknowledged");
	frame(g, &p[2], "pass");
	series(g, &p[2], r, OFF(throttle), 1, true, "#333", 2, false);
}

static void draw(FILE *f, struct rows *r, bool source, const char *name)
{
	struct fig g = { .f = f };
	struct panel p[3];
	const struct row *last = &r->v[r->n - 1];

	g.tmax = last->t > 0 ? last->t : 1;
	g.x = nice_axis_n(g.tmax, 8);
	g.x.hi = ceil(g.tmax / g.x.step - 1e-9) * g.x.step; /* no headroom in time */
	if (g.x.hi <= 0)
		g.x.hi = g.x.step;
	for (int i = 0; i < 3; i++) {
		p[i].head = 68 + i * 270;
		p[i].legend_x = PL;
		p[i].legend_y = p[i].head + 12;
		p[i].top = p[i].head + 36;
		p[i].bottom = p[i].head + 270 - 24;
	}
	if (!source) {
		/* the rate from each event to the next, from what was received */
		for (size_t i = 0; i < r->n; i++)
			r->v[i].wall = i + 1 < r->n && r->v[i + 1].t > r->v[i].t
				? (r->v[i + 1].transferred - r->v[i].transferred) /
					  (r->v[i + 1].t - r->v[i].t) : 0;
		for (size_t i = 0; i < r->n; i++)
			r->v[i].throttle = r->v[i].iteration;
	}

	draw_head(f, r, source, name);
	set_axes(p, r, source);
	for (int i = 0; i < 3; i++)
		phases(&g, &p[i], r);

	if (source)
		draw_source(&g, p, r);
	else
		draw_dest(&g, p, r);
	text(f, (PL + PR) / 2, H - 8, "middle", 12, "time since the migration started (s)");
	fputs("</svg>\n", f);
}

int pc_cli_plot(int argc, char **argv)
{
	struct rows src = { 0 }, dst = { 0 };
	struct rows *r;
	FILE *in, *out;
	char *line = NULL;
	size_t cap = 0;
	int rc = 1;

	if (argc == 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
		printf("usage: precopy plot EVENTS.jsonl OUT.svg\n");
		return 0;
	}
	if (argc != 2) {
		fprintf(stderr, "usage: precopy plot EVENTS.jsonl OUT.svg (EVENTS '-' = standard "
				"input; the --json output of migrate, incoming or demo)\n");
		return 2;
	}
	in = strcmp(argv[0], "-") ? fopen(argv[0], "r") : stdin;
	if (!in) {
		fprintf(stderr, "precopy plot: cannot read %s: %s\n", argv[0], strerror(errno));
		return 1;
	}
	while (getline(&line, &cap, in) > 0) {
		if (take(&src, &dst, line)) {
			fprintf(stderr, "precopy plot: out of memory\n");
			goto out;
		}
	}
	r = src.n ? &src : &dst;
	if (r->n < 2) {
		fprintf(stderr, "precopy plot: %s holds no migration's progress events (give it "
				"the output of precopy migrate, incoming or demo with --json)\n",
			argv[0]);
		goto out;
	}
	out = fopen(argv[1], "w");
	if (!out) {
		fprintf(stderr, "precopy plot: cannot write %s: %s\n", argv[1], strerror(errno));
		goto out;
	}
	{
		const char *base = strrchr(argv[0], '/');

		draw(out, r, r == &src, base ? base + 1 : argv[0]);
	}
	if (fclose(out)) {
		fprintf(stderr, "precopy plot: writing %s: %s\n", argv[1], strerror(errno));
		goto out;
	}
	rc = 0;
out:
	if (in != stdin)
		fclose(in);
	free(line);
	free(src.v);
	free(dst.v);
	return rc;
}
