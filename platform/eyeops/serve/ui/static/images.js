// Images the user attaches: recognised by their bytes (as the server does), previewed locally,
// never uploaded anywhere except with the request the user sends.

const FORMATS = {
  jpeg: { mime: 'image/jpeg', preview: true },
  png: { mime: 'image/png', preview: true },
  tiff: { mime: 'image/tiff', preview: false }, // browsers do not draw TIFF; the server decodes it
  dicom: { mime: 'application/dicom', preview: false },
};
export const ACCEPT = '.jpg,.jpeg,.png,.tif,.tiff,.dcm,image/jpeg,image/png,image/tiff,application/dicom';

/** The image format from magic bytes, or null (same rules as eyeops.serve.images.sniff_format). */
export function sniff(bytes) {
  const b = (i) => bytes[i];
  if (b(0) === 0xff && b(1) === 0xd8 && b(2) === 0xff) return 'jpeg';
  if ([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a].every((v, i) => b(i) === v)) return 'png';
  if ((b(0) === 0x49 && b(1) === 0x49 && b(2) === 0x2a && b(3) === 0x00)
    || (b(0) === 0x4d && b(1) === 0x4d && b(2) === 0x00 && b(3) === 0x2a)) return 'tiff';
  if (bytes.length >= 132 && String.fromCharCode(...bytes.slice(128, 132)) === 'DICM') return 'dicom';
  return null;
}

let counter = 0;

/** {image} for an accepted file, or {error} saying why it was not added. */
export async function readImage(file) {
  const head = new Uint8Array(await file.slice(0, 132).arrayBuffer());
  const format = sniff(head);
  if (!format) {
    return { error: `${file.name}: not a JPEG, PNG, TIFF or DICOM image — not added` };
  }
  const { mime, preview } = FORMATS[format];
  const blob = new Blob([file], { type: mime });
  return {
    image: {
      id: `img-${++counter}`,
      name: file.name,
      format,
      blob,
      previewUrl: preview ? URL.createObjectURL(blob) : null,
    },
  };
}

export function releaseImage(image) {
  if (image.previewUrl) URL.revokeObjectURL(image.previewUrl);
}

/** data:<mime>;base64,... — how OpenAI-style chat requests carry images. */
export function dataUrl(image) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`${image.name}: cannot read the file`));
    reader.readAsDataURL(image.blob);
  });
}

/** A thumbnail <figure>: the picture for JPEG/PNG, a labelled tile for TIFF/DICOM. */
export function thumbnail(image, index) {
  const figure = document.createElement('figure');
  figure.className = 'thumb';
  if (image.previewUrl) {
    const img = document.createElement('img');
    img.src = image.previewUrl;
    img.alt = `Image ${index}: ${image.name}`;
    figure.append(img);
  } else {
    const tile = document.createElement('div');
    tile.className = 'tile';
    tile.setAttribute('role', 'img');
    tile.setAttribute('aria-label', `Image ${index}: ${image.name} (${image.format.toUpperCase()})`);
    tile.textContent = image.format.toUpperCase();
    figure.append(tile);
  }
  const caption = document.createElement('figcaption');
  caption.textContent = `${index}. ${image.name}`;
  figure.append(caption);
  return figure;
}
