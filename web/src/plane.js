// Positions on a plane instead of a map: nothing may load from outside (no map tiles), and a
// few kilometres around a centre are all a try-out needs. Latitude and longitude are
// projected equirectangularly (a degree of longitude is cos(latitude) times a degree of
// latitude), which is exact enough at this scale.

const SVG = "http://www.w3.org/2000/svg";
const SIZE = 1000; // the viewBox is SIZE x SIZE
const KM_PER_DEGREE_LAT = 111.32;
// Lisbon, where the README's walk-through is; every point of the plane lies well within the
// default dispatch radius (30 km) of every other.
export const DEFAULT_CENTRE = { lat: 38.72, lng: -9.14 };

function element(name, attributes) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

export class Plane {
  /** Draws `spanKm` x `spanKm` around `centre` into `svg`, with a line every kilometre. */
  constructor(svg, { centre = DEFAULT_CENTRE, spanKm = 10 } = {}) {
    this.svg = svg;
    this.centre = centre;
    this.degreesLat = spanKm / KM_PER_DEGREE_LAT;
    this.degreesLng = this.degreesLat / Math.cos((centre.lat * Math.PI) / 180);
    this.markers = new Map();
    svg.setAttribute("viewBox", `0 0 ${SIZE} ${SIZE}`);
    const grid = element("g", { class: "grid" });
    for (let km = 0; km <= spanKm; km += 1) {
      const at = (km / spanKm) * SIZE;
      grid.append(element("line", { x1: at, y1: 0, x2: at, y2: SIZE }));
      grid.append(element("line", { x1: 0, y1: at, x2: SIZE, y2: at }));
    }
    const scale = element("text", { x: 12, y: SIZE - 12, class: "scale" });
    scale.textContent = "1 km";
    grid.append(scale);
    svg.append(grid);
  }

  toPoint({ lat, lng }) {
    return {
      x: ((lng - this.centre.lng) / this.degreesLng + 0.5) * SIZE,
      y: (0.5 - (lat - this.centre.lat) / this.degreesLat) * SIZE,
    };
  }

  toCoordinates({ x, y }) {
    const round = (degrees) => Math.round(degrees * 1e5) / 1e5; // about a metre
    return {
      lat: round(this.centre.lat + (0.5 - y / SIZE) * this.degreesLat),
      lng: round(this.centre.lng + (x / SIZE - 0.5) * this.degreesLng),
    };
  }

  /** Calls `pick({lat, lng})` for each click (or tap) on the plane. */
  onPick(pick) {
    this.svg.addEventListener("click", (event) => {
      const point = new DOMPoint(event.clientX, event.clientY);
      pick(this.toCoordinates(point.matrixTransform(this.svg.getScreenCTM().inverse())));
    });
  }

  /** Places (or moves) the marker `name` at `coordinates`; null removes it. */
  mark(name, coordinates, label) {
    this.markers.get(name)?.remove();
    this.markers.delete(name);
    if (!coordinates) return;
    const { x, y } = this.toPoint(coordinates);
    const marker = element("g", { class: `marker ${name}`, transform: `translate(${x} ${y})` });
    marker.append(element("circle", { r: 16 }));
    const text = element("text", { x: 20, y: 6 });
    text.textContent = label;
    marker.append(text);
    this.svg.append(marker);
    this.markers.set(name, marker);
  }
}

/** "38.72000, -9.14000" */
export function formatCoordinates({ lat, lng }) {
  return `${lat.toFixed(5)}, ${lng.toFixed(5)}`;
}
